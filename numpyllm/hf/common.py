"""Reading and writing Hugging Face checkpoint folders: ``config.json`` + ``model.safetensors``.

A folder written by ``transformers``' ``save_pretrained`` holds the model's hyper-parameters in
``config.json`` and its tensors in ``model.safetensors`` (or, for big models, several shards
listed in ``model.safetensors.index.json``). The tensors are read by ``tensor_file``: the
format is a JSON header and raw little-endian arrays, so reading it runs no code. A
``pytorch_model.bin`` is a pickle, and unpickling a file runs whatever code it names, so it is
refused with the command that converts it.

Each architecture module (``gpt2``, ``bert``, ``t5``) describes its checkpoint as a list of
``TensorMap`` entries, one per numpyllm parameter: the transformers name and whether the array
is stored transposed, and its shape computed from the config. Loading is lean and checked
first: ``collect_state`` matches the file headers against that list (missing tensors,
unexpected tensors, tied copies, dtypes, shapes) before anything is allocated, then
``build_and_fill`` refuses a model bigger than the free memory, builds it without drawing
random weights, directly in the target dtype, and reads each tensor into its parameter.
``build_checkpoint`` turns a model back into transformers' names and layouts.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from numpyllm.hf import tensor_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
GENERATION_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

CONVERT_HINT = (
    "numpyllm never unpickles files (a pickle can run arbitrary code). Convert the checkpoint "
    "once with transformers: `AutoModel.from_pretrained(folder).save_pretrained(folder)` "
    "(transformers >= 5 always writes model.safetensors; older versions need "
    "`save_pretrained(folder, safe_serialization=True)`)"
)


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint folder or one of its files is missing.

    A FileNotFoundError, and also a ValueError like numpyllm's other input errors.
    """


@dataclass(frozen=True)
class TensorMap:
    """One numpyllm parameter and the transformers tensor it is stored as.

    ours       numpyllm's parameter name, as ``model.named_parameters()`` lists it
    hf         the transformers name, with the model prefix (``transformer.``, ``bert.``)
    transpose  True when transformers stores the array transposed: torch's nn.Linear keeps
               its weight (out, in), numpyllm's Linear keeps (in, out)
    group      checkpoint part the tensor belongs to; parts listed as optional may be absent
               as a whole (a BERT masked-LM file has no classifier)
    shape      numpyllm's shape of the parameter, from the config alone: a file is checked
               against it before the model is built
    """

    ours: str
    hf: str
    transpose: bool = False
    group: str = "model"
    shape: tuple[int, ...] = ()

    @property
    def hf_shape(self) -> tuple[int, ...]:
        return self.shape[::-1] if self.transpose else self.shape


# ----------------------------------------------------------------------------- files


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The folder as a Path; CheckpointNotFoundError if it does not exist."""
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise CheckpointNotFoundError(
            f"expected a checkpoint folder holding {CONFIG_FILE} and {WEIGHTS_FILE}, "
            f"but {folder} {what}"
        )
    return folder


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder."""
    folder = checkpoint_dir(path)
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise CheckpointNotFoundError(f"{CONFIG_FILE} not found in {folder}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(config).__name__}")
    return config


def tensor_refs(path: str | os.PathLike) -> dict[str, Any]:
    """Every tensor of a checkpoint folder, by its transformers name, as a ``TensorRef``
    (name, dtype, shape, where in which file): only the headers are read.

    Reads ``model.safetensors``, or the shards that ``model.safetensors.index.json`` lists.
    A folder holding only ``pytorch_model.bin`` is refused (see ``CONVERT_HINT``).
    """
    folder = checkpoint_dir(path)
    single, index = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE
    if single.is_file():
        return dict(tensor_file.read_header(single)[0])
    if index.is_file():
        return _sharded_refs(index)
    pickles = [name for name in PICKLE_FILES if (folder / name).is_file()]
    if pickles:
        raise ValueError(f"{folder} holds {pickles[0]} but no {WEIGHTS_FILE}. {CONVERT_HINT}")
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointNotFoundError(
        f"{WEIGHTS_FILE} not found in {folder} (it holds: {', '.join(present) or 'nothing'})"
    )


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder as a NumPy array, by its transformers name
    (bfloat16 widened to float32, exactly)."""
    return {name: ref.read() for name, ref in tensor_refs(path).items()}


def _sharded_refs(index: Path) -> dict[str, Any]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{index} is not a valid safetensors index: {exc}") from exc
    refs: dict[str, Any] = {}
    for shard in shards:
        shard_path = index.parent / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise CheckpointNotFoundError(
                f"{index.name} lists {shard}, which is not in {index.parent}"
            )
        refs.update(tensor_file.read_header(shard_path)[0])
    return refs


@dataclass(frozen=True)
class ArrayRef:
    """An array already in memory, with the interface of a ``TensorRef`` (for ``from_state``
    on a dict of arrays, e.g. a torch state_dict converted to NumPy)."""

    name: str
    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> str:
        return str(self.array.dtype)

    @property
    def is_float(self) -> bool:
        return bool(np.issubdtype(self.array.dtype, np.floating))

    def read(self) -> np.ndarray:
        return self.array

    def read_into(self, out: np.ndarray, transpose: bool = False) -> None:
        out[...] = self.array.T if transpose else self.array


def as_refs(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """name -> ref: ``TensorRef`` / ``ArrayRef`` values kept, arrays wrapped in ``ArrayRef``."""
    return {
        name: value
        if isinstance(value, (tensor_file.TensorRef, ArrayRef))
        else ArrayRef(name, np.asarray(value))
        for name, value in tensors.items()
    }


def _atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Write through ``write(temp_path)`` to a temp file beside ``target``, then rename it onto
    ``target``: a crash leaves the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_checkpoint(
    path: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray]
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``generation_config.json`` into
    ``path`` (created if needed), each file atomically.

    The safetensors metadata says ``format: pt``, which transformers requires to load a file.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot save a checkpoint to {folder}: it is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        folder / WEIGHTS_FILE, lambda tmp: tensor_file.write(tmp, tensors, {"format": "pt"})
    )
    write_json(folder / CONFIG_FILE, config)
    write_json(folder / GENERATION_CONFIG_FILE, generation_config(config))
    return folder


def write_json(file: Path, obj: Mapping[str, Any]) -> None:
    """Write a JSON file atomically, keys sorted, as transformers writes its own."""
    text = json.dumps(dict(obj), indent=2, sort_keys=True) + "\n"
    _atomic_write(file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def add_token_ids(config: dict[str, Any], token_ids: Mapping[str, int | None] | None) -> None:
    """Fill config.json's special-token ids that the model's own config leaves unset
    (bos / eos / pad) from ``token_ids``, the tokenizer's; ids the model config sets win."""
    for field, value in (token_ids or {}).items():
        if field in GENERATION_FIELDS and config.get(field) is None and value is not None:
            config[field] = int(value)


def generation_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """generation_config.json: the token ids generation needs, copied from config.json."""
    out: dict[str, Any] = {"_from_model_config": True}
    for field in GENERATION_FIELDS:
        if config.get(field) is not None:
            out[field] = config[field]
    return out


# ---------------------------------------------------------------------------- config


def check_model_type(config: Mapping[str, Any], expected: str, loader: str) -> None:
    """config["model_type"], when present, must be ``expected``."""
    found = config.get("model_type")
    if found is not None and found != expected:
        raise ValueError(
            f"{loader} reads model_type {expected!r} checkpoints, but config.json says "
            f"model_type {found!r}"
        )


def check_architectures(config: Mapping[str, Any], supported: Iterable[str], loader: str) -> None:
    """Every class named in config["architectures"] must be one numpyllm can represent."""
    supported = tuple(supported)
    for name in config.get("architectures") or ():
        if name not in supported:
            raise ValueError(
                f"{loader}: config.json names architecture {name!r}, which numpyllm does not "
                f"support; supported: {', '.join(supported)}"
            )


def reject_unsupported(
    config: Mapping[str, Any], rules: Iterable[tuple[str, Any, Callable[[Any], bool]]], loader: str
) -> None:
    """Raise on the first config field numpyllm cannot honour.

    Each rule is (field, default when absent, predicate saying the value is supported).
    Computing with an unsupported setting would give different numbers than transformers, so
    it is an error rather than a silent approximation.
    """
    for field, default, supported in rules:
        value = config.get(field, default)
        if not supported(value):
            raise ValueError(
                f"{loader}: config.json sets {field}={value!r}, which numpyllm does not support"
            )


def check_config(
    config: Mapping[str, Any],
    model_type: str,
    architectures: Iterable[str],
    unsupported: Iterable[tuple[str, Any, Callable[[Any], bool]]],
    loader: str,
) -> None:
    """The checks every loader runs on config.json before building a model."""
    check_model_type(config, model_type, loader)
    check_architectures(config, architectures, loader)
    reject_unsupported(config, unsupported, loader)


def activation(config: Mapping[str, Any], field: str, default: str, loader: str) -> str:
    """config[field] (or ``default``) as an activation name numpyllm implements."""
    from numpyllm.nn.feed_forward import ACTIVATIONS

    name = config.get(field, default)
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{loader}: config.json sets {field}={name!r}, which numpyllm does not "
            f"support; supported: {', '.join(sorted(ACTIVATIONS))}"
        )
    return name


def require(config: Mapping[str, Any], field: str, loader: str) -> Any:
    if field not in config:
        raise ValueError(f"{loader}: config.json has no {field!r} field")
    return config[field]


# --------------------------------------------------------------------------- tensors


def _name_list(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def collect_state(
    tensors: Mapping[str, Any],
    entries: list[TensorMap],
    *,
    tied: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
    optional_groups: Iterable[str] = (),
    where: str = "checkpoint",
) -> tuple[dict[str, tuple[Any, bool]], set[str]]:
    """Match a checkpoint's tensors (under canonical, prefixed names) with numpyllm's
    parameters, from the names, dtypes and shapes alone: nothing is read or allocated.

    tensors         transformers name -> TensorRef / ArrayRef (see ``as_refs``)
    entries         the expected tensors, one per numpyllm parameter, with their shapes
    tied            alias -> source: a tensor stored twice in some files (an lm head tied to
                    the embedding). A present alias must equal its source, else the weights
                    are untied, which numpyllm's models cannot represent (``check_tied``).
    ignore          regular expressions of tensors to skip: buffers such as attention masks
    optional_groups groups that may be absent as a whole; a partial group is still an error

    Returns (numpyllm name -> (ref, transpose), the optional groups found absent).
    """
    remaining = dict(tensors)
    for alias, source in (tied or {}).items():
        if alias in remaining and source not in remaining:
            remaining[source] = remaining.pop(alias)  # only the tied copy was stored
        else:
            remaining.pop(alias, None)  # compared with its source after loading
    patterns = [re.compile(p) for p in ignore]
    for name in list(remaining):
        if any(p.fullmatch(name) for p in patterns):
            del remaining[name]

    optional = set(optional_groups)
    by_group: dict[str, list[TensorMap]] = {}
    for entry in entries:
        by_group.setdefault(entry.group, []).append(entry)
    absent_groups = {
        group
        for group, members in by_group.items()
        if group in optional and not any(m.hf in remaining for m in members)
    }
    wanted = [e for e in entries if e.group not in absent_groups]
    missing = [e.hf for e in wanted if e.hf not in remaining]
    if missing:
        raise ValueError(f"{where} is missing tensors: {_name_list(missing)}")
    unexpected = set(remaining) - {e.hf for e in entries}
    if unexpected:
        raise ValueError(f"{where} has tensors numpyllm does not know: {_name_list(unexpected)}")

    plan: dict[str, tuple[Any, bool]] = {}
    for entry in wanted:
        ref = remaining[entry.hf]
        if not ref.is_float:
            raise ValueError(f"{where}: {entry.hf} has dtype {ref.dtype}, expected floats")
        if tuple(ref.shape) != entry.hf_shape:
            raise ValueError(
                f"{where}: {entry.hf} has shape {tuple(ref.shape)}, but config.json implies "
                f"{entry.hf_shape} for numpyllm's {entry.ours}"
            )
        plan[entry.ours] = (ref, entry.transpose)
    return plan, absent_groups


def tied_copies(
    tensors: Mapping[str, Any], tied: Mapping[str, str] | None, entries: list[TensorMap]
) -> list[tuple[Any, str, str]]:
    """(alias ref, alias name, numpyllm name of its source) for every tied alias stored next
    to its source: each must equal the loaded parameter (``check_tied``)."""
    by_hf = {e.hf: e.ours for e in entries}
    return [
        (tensors[alias], alias, by_hf[source])
        for alias, source in (tied or {}).items()
        if alias in tensors and source in tensors and source in by_hf
    ]


def check_tied(model: Any, copies: list[tuple[Any, str, str]], where: str) -> None:
    params = dict(model.named_parameters())
    for ref, alias, ours in copies:
        value = ref.read()
        param = params[ours].data
        if value.shape != param.shape or not np.array_equal(value.astype(param.dtype), param):
            raise ValueError(
                f"{where}: {alias} differs from the tensor it is tied to; numpyllm ties the two "
                "(one shared array), so a checkpoint with separate values cannot be loaded"
            )


def available_memory() -> int | None:
    """Bytes of memory the machine can still give (MemAvailable on Linux), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(entries: list[TensorMap], dtype: Any, where: str) -> None:
    """ValueError, before anything is allocated, when the parameters would not fit in memory."""
    need = sum(math.prod(e.shape) for e in entries) * np.dtype(dtype).itemsize
    have = available_memory()
    if have is not None and need > have:
        raise ValueError(
            f"{where}: the parameters need {need / 2**30:.2f} GiB as {np.dtype(dtype)}, but "
            f"only {have / 2**30:.2f} GiB of memory is available; config.json may be wrong"
        )


def build_and_fill(
    build: Callable[[], Any],
    entries: list[TensorMap],
    plan: Mapping[str, tuple[Any, bool]],
    dtype: Any,
    where: str,
    copies: Iterable[tuple[Any, str, str]] = (),
) -> Any:
    """The model ``build()`` makes, with every parameter of ``plan`` read from its tensor.

    With every parameter in the plan the model is built uninitialised, directly in
    ``dtype`` (no random draw, no conversion); parameters missing from the plan (a head a
    file does not hold) need their initialisation, so then the model is built as usual.
    Returns the model in eval mode.
    """
    from numpyllm.nn.init import uninitialised

    dtype = float_dtype(dtype)
    check_memory(entries, dtype, where)
    if len(plan) == len(entries):
        # (a constructor scaling its fresh weights now scales garbage: no warnings for that)
        with uninitialised(dtype), np.errstate(all="ignore"):
            model = build()
    else:
        model = build()
        if model.dtype != dtype:
            model.astype(dtype)
    params = dict(model.named_parameters())
    for entry in entries:  # the maps' shapes are the models' own: a mismatch is a bug here
        if tuple(params[entry.ours].shape) != entry.shape:
            raise RuntimeError(
                f"{entry.ours}: the model has shape {params[entry.ours].shape}, the tensor "
                f"map says {entry.shape}"
            )
    for ours, (ref, transpose) in plan.items():
        ref.read_into(params[ours].data, transpose=transpose)
    check_tied(model, list(copies), where)
    return model.eval()


def build_checkpoint(model: Any, entries: list[TensorMap]) -> dict[str, np.ndarray]:
    """transformers name -> array in transformers' layout, for every entry."""
    params = dict(model.named_parameters())
    out = {}
    for entry in entries:
        array = params[entry.ours].data
        out[entry.hf] = np.ascontiguousarray(array.T if entry.transpose else array)
    return out


def float_dtype(dtype: Any) -> np.dtype:
    """np.float32 or np.float64 (the dtypes numpyllm computes in), else a TypeError."""
    resolved = np.dtype(dtype)
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


def dtype_name(model: Any) -> str:
    return str(np.dtype(model.dtype))
