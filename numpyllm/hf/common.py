"""Reading and writing Hugging Face checkpoint folders: ``config.json`` + ``model.safetensors``.

A folder written by ``transformers``' ``save_pretrained`` holds the model's hyper-parameters in
``config.json`` and its tensors in ``model.safetensors`` (or, for big models, several shards
listed in ``model.safetensors.index.json``). The tensors are read with ``safetensors.numpy``:
the format is a JSON header and raw little-endian arrays, so reading it runs no code. A
``pytorch_model.bin`` is a pickle, and unpickling a file runs whatever code it names, so it is
refused with the command that converts it.

Each architecture module (``gpt2``, ``bert``, ``t5``) describes its checkpoint as a list of
``TensorMap`` entries, one per numpyllm parameter: the transformers name and whether the array
is stored transposed. ``collect_state`` checks a checkpoint against that list (missing tensors,
unexpected tensors, tied copies, shapes) and ``build_checkpoint`` turns a model back into
transformers' names and layouts.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
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
    """

    ours: str
    hf: str
    transpose: bool = False
    group: str = "model"


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


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder, by its transformers name.

    Reads ``model.safetensors``, or the shards that ``model.safetensors.index.json`` lists.
    A folder holding only ``pytorch_model.bin`` is refused (see ``CONVERT_HINT``).
    """
    folder = checkpoint_dir(path)
    single, index = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        return _read_sharded(index)
    pickles = [name for name in PICKLE_FILES if (folder / name).is_file()]
    if pickles:
        raise ValueError(f"{folder} holds {pickles[0]} but no {WEIGHTS_FILE}. {CONVERT_HINT}")
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointNotFoundError(
        f"{WEIGHTS_FILE} not found in {folder} (it holds: {', '.join(present) or 'nothing'})"
    )


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{index} is not a valid safetensors index: {exc}") from exc
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise CheckpointNotFoundError(
                f"{index.name} lists {shard}, which is not in {index.parent}"
            )
        tensors.update(_read_safetensors(shard_path))
    return tensors


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """A safetensors file as NumPy arrays. bfloat16 (which NumPy lacks) is widened to float32:
    a bfloat16 number is the top 16 bits of a float32, so the widening is exact."""
    from safetensors import safe_open

    tensors = {}
    try:
        with safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                if f.get_slice(name).get_dtype() == "BF16":
                    tensors[name] = _read_bfloat16(file, name)
                else:
                    tensors[name] = f.get_tensor(name)
    except Exception as exc:  # the Rust reader raises its own SafetensorError type
        raise ValueError(f"{file} is not a readable safetensors file: {exc}") from exc
    return tensors


def _read_bfloat16(file: Path, name: str) -> np.ndarray:
    """Read one BF16 tensor from the raw file: 8-byte header length, JSON header, data."""
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(header_len))[name]
        start, end = entry["data_offsets"]
        f.seek(8 + header_len + start)
        raw = np.frombuffer(f.read(end - start), dtype="<u2")
    widened = raw.astype(np.uint32) << 16  # bf16 bits become the high half of a float32
    return widened.view(np.float32).reshape(entry["shape"])


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
    """Write ``model.safetensors`` then ``config.json`` into ``path`` (created if needed).

    The safetensors metadata says ``format: pt``, which transformers requires to load a file.
    """
    from safetensors.numpy import save_file

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot save a checkpoint to {folder}: it is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    _atomic_write(
        folder / WEIGHTS_FILE, lambda tmp: save_file(arrays, tmp, metadata={"format": "pt"})
    )
    text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


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
    tensors: Mapping[str, np.ndarray],
    entries: list[TensorMap],
    model_shapes: Mapping[str, tuple[int, ...]],
    dtype: Any,
    *,
    tied: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
    optional_groups: Iterable[str] = (),
    where: str = "checkpoint",
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Map a checkpoint's tensors (already under canonical, prefixed names) onto numpyllm's.

    tensors         transformers name -> array
    entries         the expected tensors, one per numpyllm parameter
    model_shapes    numpyllm name -> the model's parameter shape (checked before any copy)
    tied            alias -> source: a tensor stored twice in some files (an lm head tied to
                    the embedding). A present alias must equal its source, else the weights
                    are untied, which numpyllm's models cannot represent.
    ignore          regular expressions of tensors to skip: buffers such as attention masks
    optional_groups groups that may be absent as a whole; a partial group is still an error

    Returns (numpyllm name -> array of ``dtype``, the optional groups found absent).
    """
    tied = dict(tied or {})
    remaining = dict(tensors)
    for alias, source in tied.items():
        if alias not in remaining:
            continue
        copy = remaining.pop(alias)
        if source in remaining and not np.array_equal(copy, remaining[source]):
            raise ValueError(
                f"{where}: {alias} differs from {source}; numpyllm ties the two (one shared "
                "array), so a checkpoint with separate values cannot be loaded"
            )
        if source not in remaining:
            remaining[source] = copy  # only the tied copy was stored
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

    state: dict[str, np.ndarray] = {}
    for entry in wanted:
        array = np.asarray(remaining[entry.hf])
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{where}: {entry.hf} has dtype {array.dtype}, expected floats")
        if entry.transpose:
            array = array.T  # torch nn.Linear (out, in) -> numpyllm (in, out)
        expected = tuple(model_shapes[entry.ours])
        if array.shape != expected:
            stored = array.T.shape if entry.transpose else array.shape
            raise ValueError(
                f"{where}: {entry.hf} has shape {stored}, but config.json implies "
                f"{expected[::-1] if entry.transpose else expected} for numpyllm's {entry.ours}"
            )
        state[entry.ours] = np.ascontiguousarray(array, dtype=dtype)
    return state, absent_groups


def load_into(model: Any, state: Mapping[str, np.ndarray]) -> None:
    """Copy ``state`` into the model's parameters; parameters not in ``state`` keep their init."""
    model.load_state_dict(state, strict=False)


def build_checkpoint(model: Any, entries: list[TensorMap]) -> dict[str, np.ndarray]:
    """transformers name -> array in transformers' layout, for every entry."""
    params = dict(model.named_parameters())
    out = {}
    for entry in entries:
        array = params[entry.ours].data
        out[entry.hf] = np.ascontiguousarray(array.T if entry.transpose else array)
    return out


def model_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def float_dtype(dtype: Any) -> np.dtype:
    """np.float32 or np.float64 (the dtypes numpyllm computes in), else a TypeError."""
    resolved = np.dtype(dtype)
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


def dtype_name(model: Any) -> str:
    return str(np.dtype(model.dtype))
