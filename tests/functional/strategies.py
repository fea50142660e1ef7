"""Hypothesis strategies shared by the tests of numpyllm's ops.

Two ways to draw arrays, for two purposes:

* ``float_arrays``: hypothesis chooses every element (and can shrink them),
  for properties that must hold for any values, degenerate ones included
  (constant rows, zeros, extremes).
* ``normal_arrays`` / ``random_dout``: hypothesis chooses a seed and a
  generator fills the array with N(0, scale²) values, for gradient checks,
  where finite differences need well-spread, non-degenerate inputs.

Shapes: ``batch_shapes`` draws leading axes (0 to ``max_dims`` of them), to
which a test appends the axes its op works on, e.g.
``batch_shapes().map(lambda b: b + (t, d))`` or ``shapes_ending_in(d)``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES: tuple[type, ...] = (np.float32, np.float64)

Shape = tuple[int, ...]


def dtypes() -> st.SearchStrategy[type]:
    """float32 or float64."""
    return st.sampled_from(FLOAT_DTYPES)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``np.random.default_rng``."""
    return st.integers(min_value=0, max_value=2**32 - 1)


def batch_shapes(
    max_dims: int = 2, max_side: int = 4, min_dims: int = 0, min_side: int = 1
) -> st.SearchStrategy[Shape]:
    """Leading (batch) axes: ``min_dims`` to ``max_dims`` axes of ``min_side..max_side`` each."""
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


def shapes_ending_in(
    *trailing: int | st.SearchStrategy[int], max_dims: int = 2, max_side: int = 4
) -> st.SearchStrategy[Shape]:
    """``batch_shapes(max_dims, max_side)`` then the given trailing sides (ints or strategies)."""
    parts = [st.just(t) if isinstance(t, int) else t for t in trailing]
    return st.tuples(batch_shapes(max_dims, max_side), *parts).map(
        lambda drawn: tuple(drawn[0]) + tuple(drawn[1:])
    )


def sides(min_side: int = 1, max_side: int = 6) -> st.SearchStrategy[int]:
    """One axis length."""
    return st.integers(min_value=min_side, max_value=max_side)


def _as_strategy(value):
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def float_arrays(
    shape: Shape | st.SearchStrategy[Shape],
    dtype: type | st.SearchStrategy[type] = np.float64,
    scale: float = 10.0,
    min_magnitude: float = 0.0,
) -> st.SearchStrategy[np.ndarray]:
    """Arrays whose elements hypothesis draws from [-scale, scale] (finite, no subnormals).

    With ``min_magnitude > 0`` every element has |v| >= min_magnitude (to keep
    away from a kink at 0, e.g. ReLU's).
    """

    def elements(dt: type) -> st.SearchStrategy[float]:
        width = 32 if np.dtype(dt) == np.float32 else 64
        # Bounds must be representable at the element width.
        lo, hi = (float(np.dtype(dt).type(v)) for v in (min_magnitude, scale))
        kw = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False, width=width)
        if min_magnitude > 0.0:
            positive = st.floats(lo, hi, **kw)
            return st.one_of(positive, positive.map(lambda v: -v))
        return st.floats(-hi, hi, **kw)

    return st.tuples(_as_strategy(shape), _as_strategy(dtype)).flatmap(
        lambda sd: hnp.arrays(sd[1], sd[0], elements=elements(sd[1]))
    )


def random_array(
    shape: Shape, seed: int, dtype: type = np.float64, scale: float = 1.0
) -> np.ndarray:
    """N(0, scale²) values from ``np.random.default_rng(seed)``, in ``dtype``."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def random_dout(shape: Shape, seed: int, dtype: type = np.float64) -> np.ndarray:
    """An upstream gradient: standard normal values (never all ones: see numpyllm.gradcheck)."""
    return random_array(shape, seed + 1, dtype)


def normal_arrays(
    shape: Shape | st.SearchStrategy[Shape],
    dtype: type | st.SearchStrategy[type] = np.float64,
    scale: float = 1.0,
) -> st.SearchStrategy[np.ndarray]:
    """Arrays of N(0, scale²) values from a hypothesis-drawn seed (for gradient checks)."""
    return st.tuples(_as_strategy(shape), _as_strategy(dtype), seeds()).map(
        lambda sds: random_array(sds[0], sds[2], sds[1], scale)
    )


@contextlib.contextmanager
def no_fp_warnings() -> Iterator[None]:
    """Fail on any floating-point overflow, invalid operation (NaN) or division by zero.

    Underflow (exp of a very negative number rounding to 0) is the expected,
    harmless outcome of stable formulas and is not flagged.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            yield
