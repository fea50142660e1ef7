"""Checkpoints: one folder per saved state, safetensors for arrays and JSON for the rest.

A checkpoint folder holds::

    model.safetensors      the model's parameters (``model.state_dict()``)
    config.json            {"model_type": "gpt", "config": {...}, "dtype": "float32"}
    optimizer.safetensors  the optimizer's (and scheduler's) arrays          (optional)
    optimizer.json         their other values (an array appears as {"__tensor__": name, ...})
    trainer_state.json     step, RNG states, metrics so far                  (optional)
    tokenizer.json         the tokenizer (plus special_tokens_map.json)      (optional)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_FILE = "optimizer.json"
TRAINER_STATE_FILE = "trainer_state.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")

#: model_type -> (module, model class, config class); imported only when needed. A config
#: class of None means the model is configured by constructor arguments (saved by name).
MODEL_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "gpt": ("numpyllm.models.gpt", "GPT", "GPTConfig"),
    "bert": ("numpyllm.models.bert", "BERT", "BertConfig"),
    "t5": ("numpyllm.models.t5", "T5", "T5Config"),
    "simple_nn": ("numpyllm.models.simple_nn", "SimpleNN", None),
}
_REGISTERED_CLASSES: dict[str, tuple[type, type]] = {}
#: Constructor arguments of the models that have no config dataclass, read off a model.
_CONSTRUCTOR_ARGS = {
    "simple_nn": lambda model: {"in_features": model.in_features, "hidden": model.hidden_size},
}


def register_model(model_type: str, model_cls: type, config_cls: type) -> None:
    """Make checkpoints of another model class: ``model_cls(config_cls(**config))`` rebuilds it."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls must be a dataclass, got {config_cls!r}")
    _REGISTERED_CLASSES[model_type] = (model_cls, config_cls)


def _classes(model_type: str, folder: Path) -> tuple[type, type | None]:
    if model_type in _REGISTERED_CLASSES:
        return _REGISTERED_CLASSES[model_type]
    if model_type not in MODEL_REGISTRY:
        known = sorted(set(MODEL_REGISTRY) | set(_REGISTERED_CLASSES))
        raise ValueError(
            f"{CONFIG_FILE} in {folder} names model_type {model_type!r}; known types: {known}"
        )
    module_name, model_name, config_name = MODEL_REGISTRY[model_type]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name) if config_name is not None else None
    return getattr(module, model_name), config_cls


def model_type_of(model: Any) -> str:
    """The registry name of a model's class ("gpt", ...); ValueError for an unknown class."""
    cls = type(model)
    for model_type, (model_cls, _) in _REGISTERED_CLASSES.items():
        if cls is model_cls:
            return model_type
    for model_type, (module_name, model_name, _) in MODEL_REGISTRY.items():
        if cls.__module__ == module_name and cls.__name__ == model_name:
            return model_type
    raise ValueError(
        f"cannot checkpoint a {cls.__module__}.{cls.__name__}: not a known model class "
        f"({sorted(MODEL_REGISTRY)}); add it with numpyllm.checkpoint.register_model"
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
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found in {path.parent}")
    try:
        loaded = load_file(str(path))
    except Exception as exc:  # the Rust reader raises its own error types
        raise ValueError(
            f"{path.name} in {path.parent} is corrupted or not a safetensors file: {exc}"
        ) from exc
    return {name: np.array(value) for name, value in loaded.items()}  # copies, not file maps


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
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    if model_type in _CONSTRUCTOR_ARGS:
        return _CONSTRUCTOR_ARGS[model_type](model)
    raise ValueError(f"{type(model).__name__} has no dataclass .config to save")


def save_checkpoint(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    tokenizer: Any = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically (replacing one already there); returns it.

    ``model`` needs ``state_dict()`` and a dataclass ``config`` (or a registered way to read
    its constructor arguments); ``optimizer`` and ``scheduler`` need ``state_dict()``;
    ``tokenizer`` needs ``save(folder)``; ``trainer_state`` is any JSON-ready dict (NumPy
    scalars and small arrays allowed).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model_type = model_type_of(model)
    config = _config_dict(model, model_type)
    state = model.state_dict()
    dtypes = {str(np.asarray(v).dtype) for v in state.values()}
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"  # hidden: readers skip it
    tmp.mkdir()  # (not mkdtemp: its 0700 mode would stay on the checkpoint)
    try:
        _write_tensors(tmp / MODEL_FILE, state)
        _write_json(
            tmp / CONFIG_FILE,
            {
                "model_type": model_type,
                "config": config,
                "dtype": dtypes.pop() if len(dtypes) == 1 else "float32",
            },
        )
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
    """A checkpoint folder itself, or the newest ``checkpoint-<step>`` in a training output dir."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no checkpoint at {folder}: the path does not exist")
    if (folder / MODEL_FILE).is_file():
        return folder
    found = list_checkpoints(folder)
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {folder}: expected {MODEL_FILE} there, or checkpoint-<step> folders"
        )
    return found[-1][1]


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


def read_config(folder: str | os.PathLike) -> tuple[str, dict[str, Any], str]:
    """(model_type, config fields, dtype) from a checkpoint's config.json."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{CONFIG_FILE} not found in {folder}")
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{CONFIG_FILE} in {folder} must hold a JSON object, got {meta!r}")
    for field in ("model_type", "config"):
        if field not in meta:
            raise ValueError(f"{CONFIG_FILE} in {folder} is missing field {field!r}")
    if not isinstance(meta["config"], dict):
        raise ValueError(f"{CONFIG_FILE} in {folder}: 'config' must be an object")
    return meta["model_type"], meta["config"], str(meta.get("dtype", "float32"))


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


def check_config(model: Any, folder: str | os.PathLike) -> None:
    """ValueError unless ``model`` has the model type and config the checkpoint was saved with."""
    folder = Path(folder)
    model_type, saved, _ = read_config(folder)
    mine = model_type_of(model)
    if mine != model_type:
        raise ValueError(f"{CONFIG_FILE} in {folder} is a {model_type!r} model, not {mine!r}")
    # through JSON, so tuples and lists (and NumPy scalars and Python numbers) compare equal
    current = json.loads(json.dumps(_config_dict(model, mine), default=_json_default))
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} vs {current.get(k)!r}" for k in differing)
        raise ValueError(
            f"the model's config differs from {CONFIG_FILE} in {folder} (saved vs model): {details}"
        )


def load_model_weights(model: Any, folder: str | os.PathLike) -> None:
    """Copy a checkpoint's model.safetensors into ``model`` (strict: every name, every shape)."""
    folder = Path(folder)
    state = _read_tensors(folder / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except ValueError as exc:
        raise ValueError(f"{MODEL_FILE} in {folder} does not fit the model: {exc}") from exc


def load_model(path: str | os.PathLike) -> Any:
    """The model of a checkpoint (folder or training output folder), rebuilt from config.json."""
    folder = resolve_checkpoint(path)
    model_type, fields, dtype = read_config(folder)
    model_cls, config_cls = _classes(model_type, folder)
    model = _build_model(model_cls, config_cls, fields, folder)
    if np.dtype(dtype) != model.dtype:
        model.astype(np.dtype(dtype))
    load_model_weights(model, folder)
    return model


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
