"""Checkpoints: every folder numpyllm saves is a Hugging Face model folder.

A checkpoint folder (``checkpoint-<step>/`` of a training run) holds::

    config.json              transformers' config for the model type (gpt2, bert, t5, llama)
    generation_config.json   the special-token ids generation uses
    model.safetensors        the weights under transformers' names and layouts
    tokenizer.json           the tokenizer, with tokenizer_config.json and
                             special_tokens_map.json, as AutoTokenizer reads them   (optional)
    optimizer.safetensors    the optimizer's (and scheduler's) arrays                 (optional)
    optimizer.json           their other values (an array appears as {"__tensor__": name, ...})
    trainer_state.json       step, RNG states, metrics so far                         (optional)

so ``transformers.AutoModelForCausalLM.from_pretrained("runs/gpt/checkpoint-1500")`` (or
...ForMaskedLM, ...ForSeq2SeqLM) and ``AutoTokenizer`` load it, and numpyllm's own training
state sits beside the model as in transformers' Trainer. A LoRA run's checkpoint (the model
a ``numpyllm.peft.PeftModel``) holds the adapter instead of the model files, as PEFT saves
it (``adapter_config.json`` + ``adapter_model.safetensors``): the base weights never change,
so the adapter, the optimizer state and the trainer state are all a resume needs.

Which numpyllm class a folder holds is decided by config.json's model_type through
``numpyllm.hf.registry``. SimpleNN, which transformers has no class for, keeps numpyllm's
own config.json
(``{"model_type": "simple_nn", "config": {...}}``); checkpoints GPT, BERT and T5 were saved
in with that older format still load, with a note that saving again converts them.

Nothing is ever unpickled. A save writes every file into a hidden temp folder next
to the target (same filesystem), fsyncs them, then renames the folder onto the
target name, so a crash leaves either the old checkpoint or the new one, never half
of one. Hidden leftovers (``.checkpoint-7.tmp-*``) are ignored by every reader.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.safetensors"
MODEL_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_FILE = "optimizer.json"
TRAINER_STATE_FILE = "trainer_state.json"
TOKENIZER_FILE = "tokenizer.json"
ADAPTER_FILE = "adapter_model.safetensors"
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")

#: numpyllm's own config.json format, {"model_type": ..., "config": {...}}: model_type ->
#: (module, model class, config class or None for a model configured by constructor
#: arguments). SimpleNN is saved so; GPT, BERT and T5 were, before their folders became
#: Hugging Face's, and such checkpoints still load.
OWN_FORMAT: dict[str, tuple[str, str, str | None]] = {
    "gpt": ("numpyllm.models.gpt", "GPT", "GPTConfig"),
    "bert": ("numpyllm.models.bert", "BERT", "BertConfig"),
    "t5": ("numpyllm.models.t5", "T5", "T5Config"),
    "simple_nn": ("numpyllm.models.simple_nn", "SimpleNN", None),
}
#: Constructor arguments of the models that have no config dataclass, read off a model.
_CONSTRUCTOR_ARGS = {
    "simple_nn": lambda model: {"in_features": model.in_features, "hidden": model.hidden_size},
}


def _own_classes(model_type: str) -> tuple[type, type | None]:
    module_name, model_name, config_name = OWN_FORMAT[model_type]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name) if config_name is not None else None
    return getattr(module, model_name), config_cls


def _adapter_model(model: Any) -> Any:
    """The model as a ``numpyllm.peft.PeftModel`` (a LoRA run's), or None."""
    from numpyllm.peft import PeftModel

    return model if isinstance(model, PeftModel) else None


def model_type_of(model: Any) -> str:
    """config.json's model_type for a model ("gpt2", ...; a PeftModel's is its base model's);
    ValueError for a class numpyllm cannot save."""
    from numpyllm.hf.registry import FORMATS, format_for_model

    if _adapter_model(model) is not None:
        model = model.base_model
    fmt = format_for_model(model)
    if fmt is not None:
        return fmt.MODEL_TYPE
    cls = type(model)
    if cls is _own_classes("simple_nn")[0]:
        return "simple_nn"
    raise ValueError(
        f"cannot checkpoint a {cls.__module__}.{cls.__name__}: not a model class numpyllm "
        f"saves (those of the model types {sorted(FORMATS)}, and SimpleNN); a new model type "
        "is registered in numpyllm.hf.registry.FORMATS"
    )


# ------------------------------------------------------------------------ JSON


def _json_default(value: Any) -> Any:
    """JSON for NumPy values: scalars as Python numbers, small arrays tagged (RNG states)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.dtype):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON: {value!r}")


def _json_object_hook(obj: dict) -> Any:
    if set(obj) == {"__ndarray__", "dtype"}:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    return obj


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text, object_hook=_json_object_hook)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path.name} in {path.parent} is corrupted or not JSON: {exc}") from exc


# ------------------------------------------------------------------- tensors


def _write_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from numpyllm.hf import tensor_file

    tensor_file.write(path, tensors)


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from numpyllm.hf import tensor_file

    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found in {path.parent}")
    refs, _ = tensor_file.read_header(path)
    return {name: ref.read() for name, ref in refs.items()}


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, np.ndarray]) -> Any:
    """Replace each array inside ``obj`` by {"__tensor__": name}, collecting them in ``tensors``."""
    if isinstance(obj, np.ndarray):
        if prefix in tensors:
            raise ValueError(f"two arrays of the optimizer state map to the name {prefix!r}")
        tensors[prefix] = obj
        # the shape too: safetensors' NumPy reader gives a 0-d array back as shape (1,)
        return {"__tensor__": prefix, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _split_tensors(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _join_tensors(obj: Any, tensors: dict[str, np.ndarray], folder: Path) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__", "shape"}:
            name, shape = obj["__tensor__"], tuple(obj["shape"])
            if name not in tensors:
                raise ValueError(
                    f"{OPTIMIZER_TENSORS_FILE} in {folder} is missing the tensor {name!r} "
                    f"that {OPTIMIZER_FILE} refers to"
                )
            if tensors[name].size != math.prod(shape):
                raise ValueError(
                    f"{OPTIMIZER_TENSORS_FILE} in {folder}: tensor {name!r} has shape "
                    f"{tensors[name].shape}, {OPTIMIZER_FILE} says {shape}"
                )
            return tensors[name].reshape(shape)
        return {k: _join_tensors(v, tensors, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors, folder) for v in obj]
    return obj


# ---------------------------------------------------------------------- saving


def _fsync(path: Path) -> None:
    """Flush a file or a folder entry to disk (folders cannot be fsynced on Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _config_dict(model: Any, model_type: str) -> dict[str, Any]:
    """The fields of numpyllm's own config.json format (SimpleNN's constructor arguments)."""
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    return _CONSTRUCTOR_ARGS[model_type](model)


def _token_ids(tokenizer: Any) -> dict[str, int | None]:
    """The tokenizer's special-token ids, as config.json names them."""
    if tokenizer is None:
        return {}
    return {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id", None)
            for role in ("bos", "eos", "pad")}  # fmt: skip


def save_model_files(folder: str | os.PathLike, model: Any, tokenizer: Any = None) -> None:
    """The model's part of a checkpoint: config.json, generation_config.json and
    model.safetensors in transformers' format (numpyllm's own format for SimpleNN); for a
    PeftModel, its adapter in PEFT's format."""
    from numpyllm.hf.registry import format_for_model

    folder = Path(folder)
    if _adapter_model(model) is not None:
        model.save_pretrained(folder)
        return
    model_type = model_type_of(model)
    fmt = format_for_model(model)
    if fmt is not None:
        fmt.save(model, folder, token_ids=_token_ids(tokenizer))
        return
    state = model.state_dict()
    _write_tensors(folder / MODEL_FILE, state)
    dtypes = {str(np.asarray(v).dtype) for v in state.values()}
    config = _config_dict(model, model_type)
    dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    _write_json(folder / CONFIG_FILE, {"model_type": model_type, "config": config, "dtype": dtype})


def save_checkpoint(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    tokenizer: Any = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically (replacing one already there); returns it.

    ``model`` is a GPT, BERT, T5 (or SimpleNN); ``optimizer`` and ``scheduler`` need
    ``state_dict()``; ``tokenizer`` needs ``save(folder)``; ``trainer_state`` is any
    JSON-ready dict (NumPy scalars and small arrays allowed).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model_type_of(model)  # a model numpyllm cannot save fails before any file is written
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"  # hidden: readers skip it
    tmp.mkdir()  # (not mkdtemp: its 0700 mode would stay on the checkpoint)
    try:
        save_model_files(tmp, model, tokenizer)
        if optimizer is not None or scheduler is not None:
            tensors: dict[str, np.ndarray] = {}
            meta = {
                "optimizer": _split_tensors(
                    optimizer.state_dict() if optimizer is not None else None, "optimizer", tensors
                ),
                "scheduler": _split_tensors(
                    scheduler.state_dict() if hasattr(scheduler, "state_dict") else None,
                    "scheduler",
                    tensors,
                ),
            }
            _write_tensors(tmp / OPTIMIZER_TENSORS_FILE, tensors)
            _write_json(tmp / OPTIMIZER_FILE, meta)
        if trainer_state is not None:
            _write_json(tmp / TRAINER_STATE_FILE, trainer_state)
        if tokenizer is not None:
            tokenizer.save(tmp)
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished temp folder onto ``target``; an existing one is moved aside first."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
        os.replace(target, old)
        os.replace(tmp, target)
        _fsync(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
        _fsync(target.parent)


# --------------------------------------------------------------------- finding


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The ``checkpoint-<step>`` folders in ``output_dir`` as (step, path), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_PATTERN.fullmatch(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The newest ``checkpoint-<step>`` in a training output folder, else the folder itself
    when it is a model folder (a checkpoint, or the final model a run saves beside them)."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no checkpoint at {folder}: the path does not exist")
    found = list_checkpoints(folder)
    if found:  # the newest state of a run, also while a resumed run has not finished
        return found[-1][1]
    if any((folder / name).is_file()
           for name in (MODEL_FILE, MODEL_INDEX_FILE, CONFIG_FILE, ADAPTER_FILE)):  # fmt: skip
        return folder  # a model folder (the loader says what is missing from it, if anything)
    raise FileNotFoundError(
        f"no checkpoint in {folder}: expected {MODEL_FILE} there, or checkpoint-<step> folders"
    )


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoint folders; returns the ones deleted.

    Each is first renamed to a hidden name (atomic), so an interrupted deletion never
    leaves a partial folder under a checkpoint name.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    doomed = [path for _, path in list_checkpoints(output_dir)[:-keep]]
    for path in doomed:
        hidden = path.parent / f".{path.name}.deleting-{uuid.uuid4().hex}"
        os.replace(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return doomed


# --------------------------------------------------------------------- loading


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's config.json, as a dict."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{CONFIG_FILE} not found in {folder}")
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{CONFIG_FILE} in {folder} must hold a JSON object, got {meta!r}")
    return meta


def _own_format(meta: dict[str, Any], folder: Path) -> tuple[str, dict[str, Any], str] | None:
    """(model_type, config fields, dtype) of numpyllm's own config.json format, else None."""
    if meta.get("model_type") not in OWN_FORMAT or "config" not in meta:
        return None
    if not isinstance(meta["config"], dict):
        raise ValueError(f"{CONFIG_FILE} in {folder}: 'config' must be an object")
    return meta["model_type"], meta["config"], str(meta.get("dtype", "float32"))


_noted: set[Path] = set()


def _note_old_format(folder: Path) -> None:
    """Say once per folder that the checkpoint predates the Hugging Face layout."""
    if folder.resolve() in _noted:
        return
    _noted.add(folder.resolve())
    warnings.warn(
        f"{folder} is a checkpoint in numpyllm's older format (config.json with a 'config' "
        "field); it loads as it is, and saving it again (save_checkpoint, save_pretrained, "
        "or a training run) writes a Hugging Face folder",
        UserWarning,
        stacklevel=3,
    )


def _build_model(model_cls: type, config_cls: type | None, fields: dict, folder: Path) -> Any:
    """``model_cls(config_cls(**fields))``, or ``model_cls(**fields)`` without a config class,
    with a clear error for a missing, unknown or invalid field."""
    if config_cls is not None:
        accepted = {
            f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(config_cls)
            if f.init
        }
        owner = config_cls.__name__
    else:
        params = list(inspect.signature(model_cls).parameters.values())
        accepted = {p.name: p.default is inspect.Parameter.empty for p in params if p.name != "rng"}
        owner = model_cls.__name__
    missing = [name for name, required in accepted.items() if required and name not in fields]
    if missing:
        raise ValueError(f"{CONFIG_FILE} in {folder} is missing field(s) {missing} of {owner}")
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ValueError(f"{CONFIG_FILE} in {folder} has unknown field(s) {unknown} for {owner}")
    try:
        if config_cls is None:
            return model_cls(**fields)
        config = config_cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{CONFIG_FILE} in {folder} holds an invalid config: {exc}") from exc
    return model_cls(config)


def _load_own_format(folder: Path, own: tuple[str, dict[str, Any], str]) -> Any:
    model_type, fields, dtype = own
    model = _build_model(*_own_classes(model_type), fields, folder)
    if np.dtype(dtype) != model.dtype:
        model.astype(np.dtype(dtype))
    state = _read_tensors(folder / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except ValueError as exc:
        raise ValueError(f"{MODEL_FILE} in {folder} does not fit the model: {exc}") from exc
    return model


def _saved_dtype(meta: dict[str, Any]) -> np.dtype:
    """float64 when config.json says the weights are float64, else float32 (numpyllm computes
    in one of the two; float16 / bfloat16 files are widened)."""
    name = meta.get("dtype") or meta.get("torch_dtype")
    return np.dtype(np.float64) if name == "float64" else np.dtype(np.float32)


def load_model(path: str | os.PathLike, dtype: Any = None) -> Any:
    """The model of a checkpoint (a model folder, or a training output folder: its newest
    checkpoint), in eval mode. Its class comes from config.json's model_type; ``dtype``
    (float32 or float64) defaults to the dtype the weights were saved in."""
    from numpyllm.hf.registry import format_for_config

    folder = resolve_checkpoint(path)
    meta = read_config(folder)
    own = _own_format(meta, folder)
    if own is not None:
        if own[0] != "simple_nn":
            _note_old_format(folder)
        model = _load_own_format(folder, own)
        if dtype is not None and model.dtype != np.dtype(dtype):
            model.astype(dtype)
        return model.eval()
    fmt = format_for_config(meta, f"{CONFIG_FILE} in {folder}")
    return fmt.load(folder, dtype=_saved_dtype(meta) if dtype is None else dtype)


def check_config(model: Any, folder: str | os.PathLike) -> None:
    """ValueError unless ``model`` has the model type and config the checkpoint was saved with
    (for a PeftModel: the adapter's settings; the adapter's shapes are checked as it loads)."""
    from numpyllm.hf.registry import format_for_config

    folder = Path(folder)
    if _adapter_model(model) is not None:
        model.check_adapter_config(folder)
        return
    meta = read_config(folder)
    mine = model_type_of(model)
    own = _own_format(meta, folder)
    if own is not None:
        saved_type, saved = own[0], own[1]
        if _own_classes(saved_type)[0] is not type(model):
            raise ValueError(f"{CONFIG_FILE} in {folder} is a {saved_type!r} model, not {mine!r}")
        current = _config_dict(model, saved_type)
    else:
        fmt = format_for_config(meta, f"{CONFIG_FILE} in {folder}")
        if fmt.MODEL_TYPE != mine:
            raise ValueError(
                f"{CONFIG_FILE} in {folder} is a {fmt.MODEL_TYPE!r} model, not {mine!r}"
            )
        saved = _config_dict_of(fmt.config_from_hf(meta))
        current = _config_dict_of(model.config)
    # through JSON, so tuples and lists (and NumPy scalars and Python numbers) compare equal
    saved = json.loads(json.dumps(saved, default=_json_default))
    current = json.loads(json.dumps(current, default=_json_default))
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} vs {current.get(k)!r}" for k in differing)
        raise ValueError(
            f"the model's config differs from {CONFIG_FILE} in {folder} (saved vs model): {details}"
        )


def _config_dict_of(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


def load_model_weights(model: Any, folder: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into ``model`` in place (every name, every shape), so that
    views an optimizer holds of the parameters stay valid. A PeftModel loads its adapter."""
    if _adapter_model(model) is not None:
        model.load_adapter(folder)
        return
    loaded = load_model(folder, dtype=model.dtype)
    try:
        model.load_state_dict(loaded.state_dict(), strict=True)
    except ValueError as exc:
        raise ValueError(f"the weights in {folder} do not fit the model: {exc}") from exc


def read_optimizer_state(folder: str | os.PathLike) -> tuple[dict | None, dict | None]:
    """(optimizer state_dict, scheduler state_dict), either None when not saved."""
    folder = Path(folder)
    if not (folder / OPTIMIZER_FILE).is_file():
        return None, None
    meta = _read_json(folder / OPTIMIZER_FILE)
    if not isinstance(meta, dict) or not {"optimizer", "scheduler"} <= meta.keys():
        raise ValueError(
            f"{OPTIMIZER_FILE} in {folder} is missing field 'optimizer' or 'scheduler'"
        )
    tensors = _read_tensors(folder / OPTIMIZER_TENSORS_FILE)
    return _join_tensors(meta["optimizer"], tensors, folder), _join_tensors(
        meta["scheduler"], tensors, folder
    )


def read_trainer_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    folder = Path(folder)
    path = folder / TRAINER_STATE_FILE
    if not path.is_file():
        return None
    state = _read_json(path)
    if not isinstance(state, dict):
        raise ValueError(f"{TRAINER_STATE_FILE} in {folder} must hold a JSON object")
    return state


@dataclass
class Checkpoint:
    """Everything a checkpoint folder holds, loaded."""

    path: Path
    model: Any
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    trainer_state: dict[str, Any] | None
    tokenizer: Any | None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint folder (or the newest one in a training output folder)."""
    folder = resolve_checkpoint(path)
    model = load_model(folder)
    optimizer_state, scheduler_state = read_optimizer_state(folder)
    tokenizer = None
    if (folder / TOKENIZER_FILE).is_file():
        from numpyllm.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(folder)
    return Checkpoint(
        path=folder,
        model=model,
        optimizer_state=optimizer_state,
        scheduler_state=scheduler_state,
        trainer_state=read_trainer_state(folder),
        tokenizer=tokenizer,
    )
