"""safetensors files read lazily and written without copies.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the
tensors' bytes back to back::

    {"wte.weight": {"dtype": "F32", "shape": [50257, 768], "data_offsets": [0, 154389504]},
     ..., "__metadata__": {"format": "pt"}}

Reading the header alone gives every tensor's name, dtype and shape, so a loader can check a
whole checkpoint against its config before it allocates anything; each tensor is then read
straight into the array that keeps it (``TensorRef.read_into``), one at a time, so loading
needs no second copy of the model. Every offset is checked against the file's size first: a
header cannot make the reader allocate more than the file holds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# safetensors dtype -> NumPy dtype (little-endian). BF16 has no NumPy type: read as its bits.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_NAMES = {dtype: name for name, dtype in DTYPES.items() if name != "BF16"}
MAX_HEADER = 100 << 20  # bytes; real headers are a few hundred KiB at most
_CHUNK = 16 << 20  # bytes read at a time when a tensor is converted on the way in


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a file, not read yet: where it is, its dtype and its shape."""

    file: Path
    name: str
    dtype: str  # the safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def read(self) -> np.ndarray:
        """The tensor as a new array (BF16 widened to float32, exactly)."""
        stored = np.empty(self.shape, dtype=DTYPES[self.dtype])
        self._read_raw(stored)
        return _widen_bfloat16(stored) if self.dtype == "BF16" else stored

    def read_into(self, out: np.ndarray, transpose: bool = False) -> None:
        """Fill ``out`` (a float array of the tensor's shape, or its transpose's) in place.

        The bytes go straight into ``out`` when nothing needs converting; otherwise at most
        one tensor's worth of temporary memory is used.
        """
        expected = self.shape[::-1] if transpose else self.shape
        if out.shape != expected:
            raise ValueError(f"{self.name}: cannot read shape {self.shape} into {out.shape}")
        direct = DTYPES[self.dtype] == out.dtype and self.dtype != "BF16"
        if direct and not transpose and out.flags.c_contiguous:
            self._read_raw(out)
            return
        if transpose or not out.flags.c_contiguous:
            value = self.read()
            out[...] = value.T if transpose else value
            return
        # same layout, another dtype: convert a chunk of rows at a time
        flat_out = out.reshape(-1)
        item = DTYPES[self.dtype].itemsize
        step = max(1, _CHUNK // item)
        with open(self.file, "rb") as f:
            f.seek(self.start)
            for lo in range(0, flat_out.size, step):
                hi = min(lo + step, flat_out.size)
                raw = np.empty(hi - lo, dtype=DTYPES[self.dtype])
                _read_exactly(f, raw, self)
                flat_out[lo:hi] = _widen_bfloat16(raw) if self.dtype == "BF16" else raw

    def _read_raw(self, out: np.ndarray) -> None:
        with open(self.file, "rb") as f:
            f.seek(self.start)
            _read_exactly(f, out, self)


def _read_exactly(f: Any, out: np.ndarray, ref: TensorRef) -> None:
    view = out.reshape(-1).view(np.uint8).data  # a memoryview of out's bytes
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise ValueError(f"{ref.file} ends inside tensor {ref.name}: the file is truncated")
        done += n


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits as float32: a bfloat16 number is the top half of a float32, so exact."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_header(file: str | os.PathLike) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """(tensor name -> TensorRef, the file's ``__metadata__``), reading only the header.

    ValueError for anything that is not a well-formed safetensors file: a header that is
    not JSON, an unknown dtype, a negative size, offsets that overlap, leave gaps, disagree
    with the shape or run past the end of the file.
    """
    path = Path(file)
    size = path.stat().st_size
    where = f"{path.name} in {path.parent}"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{where} is corrupted or not a safetensors file: too short")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"{where} is corrupted or not a safetensors file: header of {n} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{where} is corrupted or not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{where} is corrupted or not a safetensors file: header not an object")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + n, size - 8 - n
    refs: dict[str, TensorRef] = {}
    for name, entry in header.items():
        refs[name] = _ref(path, where, name, entry, data_start, data_size)
    spans = sorted((r.start, r.end, r.name) for r in refs.values())
    position = data_start
    for start, end, name in spans:
        if start != position and end != start:  # empty tensors may sit anywhere
            raise ValueError(f"{where} is corrupted: tensor {name} does not follow the previous")
        position = max(position, end)
    return refs, {str(k): str(v) for k, v in dict(metadata).items()}


def _ref(path: Path, where: str, name: str, entry: Any, data_start: int, data_size: int):
    try:
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        shape = tuple(int(s) for s in shape)
        start, end = int(start), int(end)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad header entry for {name}: {entry!r}") from exc
    if dtype not in DTYPES:
        raise ValueError(f"{where}: tensor {name} has unknown dtype {dtype!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"{where}: tensor {name} has a negative size in shape {shape}")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if not 0 <= start <= end <= data_size or end - start != nbytes:
        raise ValueError(
            f"{where} is corrupted or truncated: tensor {name} ({dtype}, shape {shape}) needs "
            f"{nbytes} bytes at [{start}, {end}) of a {data_size}-byte data section"
        )
    return TensorRef(path, name, dtype, shape, data_start + start, data_start + end)


def write(
    file: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict | None = None
) -> None:
    """Write ``tensors`` as a safetensors file at ``file``, each array's bytes written from
    the array itself (no serialised copy of the whole model in memory)."""
    arrays = {name: np.asarray(value) for name, value in tensors.items()}
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, array in arrays.items():
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _NAMES:
            raise TypeError(f"cannot write tensor {name} of dtype {array.dtype} to safetensors")
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for array in arrays.values():
            contiguous = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            f.write(contiguous.reshape(-1).view(np.uint8).data)
