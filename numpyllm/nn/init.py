"""Weight initialisation: every draw comes from a Generator the caller seeded.

Inside ``uninitialised(dtype)`` the same functions only allocate: a model about to be
filled from a checkpoint is built without drawing numbers that would be overwritten, and
directly in the dtype it will hold (no float64 draw converted afterwards).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np

from numpyllm.nn.parameter import Parameter

# the dtype every parameter is allocated in while building an uninitialised model, else None
_UNINITIALISED: contextvars.ContextVar[np.dtype | None] = contextvars.ContextVar(
    "uninitialised", default=None
)


@contextlib.contextmanager
def uninitialised(dtype: Any = np.float32) -> Iterator[None]:
    """Parameters made inside hold uninitialised memory of ``dtype``: to be filled by a loader.

    (Each Parameter's gradient is still a zeros array, which the operating system maps
    lazily: it takes no memory until a backward pass writes into it.)
    """
    token = _UNINITIALISED.set(np.dtype(dtype))
    try:
        yield
    finally:
        _UNINITIALISED.reset(token)


def _empty(shape: tuple[int, ...]) -> Parameter | None:
    dtype = _UNINITIALISED.get()
    return None if dtype is None else Parameter(np.empty(shape, dtype=dtype))


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype) -> Parameter:
    empty = _empty(shape)
    if empty is not None:
        return empty
    return Parameter((rng.standard_normal(shape) * std).astype(dtype))


def zeros(shape: tuple[int, ...], dtype) -> Parameter:
    return _empty(shape) or Parameter(np.zeros(shape, dtype=dtype))


def ones(shape: tuple[int, ...], dtype) -> Parameter:
    return _empty(shape) or Parameter(np.ones(shape, dtype=dtype))


def child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent Generator (for a dropout layer), seeded from the model's."""
    return np.random.default_rng(int(rng.integers(2**63)))
