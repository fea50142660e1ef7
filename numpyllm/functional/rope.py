"""Rotary position embedding (RoPE), in Hugging Face's "rotate half" layout.

RoPE tells attention where a token is by rotating its query and key vectors, not by adding
a position vector to the token. The head dimension dh (even) is split into two halves, and
feature i of the first half is paired with feature i of the second half (i < dh / 2): the
pair (x_i, x_{i + dh/2}) is a point in a plane, turned by the angle m θ_i at position m,

    θ_i = rope_theta^(-2i / dh)                    one frequency per pair, i = 0 .. dh/2 - 1

    [y_i        ]   [cos mθ_i  -sin mθ_i] [x_i        ]
    [y_{i+dh/2} ] = [sin mθ_i   cos mθ_i] [x_{i+dh/2} ]

or, over the whole vector, with c = [cos mθ, cos mθ] and s = [sin mθ, sin mθ] (each (dh,),
the dh/2 angles written twice) and rotate_half([a, b]) = [-b, a]:

    y = x ⊙ c + rotate_half(x) ⊙ s.

Why the score then depends only on the offset. Write pair i as a complex number
z_i = x_i + j x_{i+dh/2}; the rotation is multiplication by e^{j m θ_i}. For a query q at
position m and a key k at position n, the dot product of the rotated vectors is the real
part of a sum of products of one with the conjugate of the other:

    R_m q · R_n k = Re Σ_i (q_i e^{j m θ_i}) conj(k_i e^{j n θ_i})
                  = Re Σ_i q_i conj(k_i) e^{j (m - n) θ_i},

a function of q, k and m - n only: shifting both positions by the same amount (a prompt
starting later, a KV cache offset) leaves every attention score unchanged.

Backward. Per pair the map is a rotation matrix R(mθ_i), orthogonal, so its transpose is its
inverse, the rotation by -mθ_i:

    dx = R(mθ)^T dy = R(-mθ) dy = dy ⊙ c - rotate_half(dy) ⊙ s.

(With the matrix P of rotate_half, P^T = -P: P [a, b] = [-b, a] and P^T [a, b] = [b, -a].
Then dx = c ⊙ dy + P^T (s ⊙ dy) = c ⊙ dy - P (s ⊙ dy), and P(s ⊙ dy) = s ⊙ P dy because s
repeats each value in both halves.) The cache is just the two tables.

The tables are computed in float64 and cast to the input's dtype, for positions
``offset .. offset + T - 1``: a KV cache's new tokens sit after its P cached ones.
"""

from __future__ import annotations

import numpy as np


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """θ_i = theta^(-2i / head_dim) for i = 0 .. head_dim/2 - 1, float64 (head_dim/2,)."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rope: the head dimension must be even and >= 2, got {head_dim}")
    if not theta > 0:
        raise ValueError(f"rope: theta must be > 0, got {theta}")
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rope_tables(
    head_dim: int, length: int, offset: int = 0, theta: float = 10000.0, dtype=np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (length, head_dim): the angles m θ_i of positions m = offset ..
    offset + length - 1, each half of the head dimension holding the same dh/2 angles."""
    if offset < 0 or length < 0:
        raise ValueError(f"rope: offset and length must be >= 0, got {offset} and {length}")
    positions = np.arange(offset, offset + length, dtype=np.float64)  # (T,)
    angles = np.outer(positions, rope_frequencies(head_dim, theta))  # (T, dh/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (T, dh): the halves share angles
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rope_forward(
    x: np.ndarray, cos: np.ndarray, sin: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """y = x ⊙ cos + rotate_half(x) ⊙ sin, rotate_half([a, b]) = [-b, a].

    Shapes: x (..., T, dh), cos and sin (T, dh) from ``rope_tables`` -> y (..., T, dh), a
    new C-contiguous array in x's dtype (so a caller may fold its axes into a view).
    Passes over whole rows: a C-ordered copy, the halves swapped, y ⊙ c, + swap ⊙ ±s.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"rope: expected a floating-point x, got dtype {x.dtype}")
    if x.ndim < 2 or cos.shape != x.shape[-2:] or sin.shape != cos.shape:
        raise ValueError(
            f"rope: x must be (..., T, dh) with cos and sin (T, dh), got x {x.shape}, "
            f"cos {cos.shape}, sin {sin.shape}"
        )
    cos, sin = cos.astype(x.dtype, copy=False), sin.astype(x.dtype, copy=False)
    return _rotate(x, cos, sin, sign=1.0), (cos, sin)


def rope_backward(dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """dx = dout ⊙ cos - rotate_half(dout) ⊙ sin: the rotation by -mθ (see the module
    docstring), i.e. the forward with sin negated."""
    cos, sin = cache
    return _rotate(np.asarray(dout, dtype=cos.dtype), cos, sin, sign=-1.0)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, sign: float) -> np.ndarray:
    """x ⊙ cos + sign · rotate_half(x) ⊙ sin, as whole-vector passes over C-ordered arrays.

    rotate_half(x) = [-x_b, x_a] is the halves swapped, swap(x) = [x_b, x_a], times the
    signs [-1, +1], which go into the (T, dh) table instead of the big array:

        y = x ⊙ cos + swap(x) ⊙ (sign · [-sin_a, sin_b])

    (an element-wise pass over one half of the last axis is a strided loop, which NumPy
    runs several times slower than a pass over whole rows; x itself may be a transposed
    view of a projection's output, so it is copied to C order first, in one pass).
    """
    half = x.shape[-1] // 2
    y = np.array(x, order="C")  # (..., T, dh), a fresh C-ordered copy, x's dtype
    swapped = np.empty_like(y)
    swapped[..., :half] = y[..., half:]
    swapped[..., half:] = y[..., :half]
    signed_sin = np.concatenate((-sin[:, :half], sin[:, half:]), axis=-1)  # (T, dh), small
    if sign < 0:
        np.negative(signed_sin, out=signed_sin)
    y *= cos
    swapped *= signed_sin
    y += swapped
    return y
