"""Inverted dropout: zero each element with probability p, scale the survivors by 1 / (1 - p)."""

from __future__ import annotations

import numbers

import numpy as np


def dropout_forward(
    x: np.ndarray, p: float, rng: np.random.Generator, training: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """y = x ⊙ m / (1 - p),  m_i ~ Bernoulli(1 - p) independently.

    E[y_i] = x_i (1 - p) / (1 - p) = x_i, so no rescaling is needed at
    evaluation time, when dropout is the identity. The identity case
    (``training=False`` or ``p == 0``) returns x itself, not a copy, with cache
    None; ``rng`` is then not touched, so evaluation does not shift the random
    stream.

    The mask is drawn in x's dtype (``rng.random(dtype=float32)`` for float32:
    half the bytes and twice the speed of float64 draws), as uniform u in
    [0, 1), keep where u >= p. The cache is the scaled mask m / (1 - p), in
    x's dtype, so the backward is a single multiply.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"dropout: expected a floating-point x, got dtype {x.dtype}")
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1), got {p!r}")
    if not training or p == 0.0:
        return x, None
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a np.random.Generator, got {type(rng).__name__}")
    draw_dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    scale = rng.random(x.shape, dtype=draw_dtype)  # u ~ U[0, 1)
    np.greater_equal(scale, float(p), out=scale)  # keep: 1.0, drop: 0.0
    scale *= 1.0 / (1.0 - float(p))
    scale = scale.astype(x.dtype, copy=False)
    return np.multiply(x, scale, out=np.empty_like(x)), scale  # out=: an array even when 0-d


def dropout_backward(dout: np.ndarray, cache: np.ndarray | None) -> np.ndarray:
    """y = x ⊙ s with s = m / (1 - p) fixed  ->  dx = dout ⊙ s (dout itself for the identity)."""
    if cache is None:
        return dout
    return np.multiply(dout, cache, out=np.empty_like(cache))
