"""Elementwise activations: ReLU, sigmoid, tanh, GELU (exact) and GELU (tanh approximation).

Every forward maps ``x`` of any shape to ``out`` of the same shape and dtype;
every backward returns ``dx = dout * f'(x)``. Each cache holds only what its
derivative needs: ReLU the input, sigmoid and tanh their output (both
derivatives are functions of the output), the GELUs the input and the factor
Φ(x) (or its tanh analogue) computed on the way. Caches hold references, not
copies: sigmoid's and tanh's are the returned outputs, so modifying an output
in place changes what its backward computes.

NumPy has no ``erf``, so this module carries one (:func:`erf`), accurate to
about one unit in the last place in float64, which the exact GELU needs to match
PyTorch to 1e-9. In float32 the exact GELU uses a shorter, branch-free formula
for Φ instead (see :func:`_normal_cdf_fast`). Inputs are assumed finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _check_float(x: np.ndarray, op: str) -> np.ndarray:
    """x as an array of at least one axis (so ufuncs return arrays, and ``out=`` works)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{op}: expected a floating-point array, got dtype {x.dtype}")
    return np.atleast_1d(x)


def _horner(coefficients: tuple[float, ...], v: np.ndarray) -> np.ndarray:
    """sum_k c_k v^k by Horner's rule, in v's dtype (two in-place passes per coefficient)."""
    acc = v * coefficients[-1]
    acc += coefficients[-2]
    for c in reversed(coefficients[:-2]):
        acc *= v
        acc += c
    return acc


# ---------------------------------------------------------------------------- erf
#
# Two regions, each a polynomial whose coefficients were obtained here by
# Chebyshev interpolation in 60-digit arithmetic, then expanded into powers:
#
#   |z| < 1:  erf(z) = z P(z^2)      P interpolates erf(z)/z at 12 nodes in z^2 ∈ [0, 1]
#   |z| >= 1: erfc(|z|) = exp(-z^2) t Q(s),   t = 2 / (2 + |z|),  s = 3t - 1 ∈ (-1, 1]
#             Q interpolates exp(z^2) erfc(z) / t at 21 nodes in t ∈ [0, 2/3],
#             i.e. over the whole half-line z ∈ [1, ∞) (t = 0 is z = ∞).
#
# erfc is computed directly in the second region, so it keeps its relative
# accuracy far into the tail (Φ(x) for very negative x), where 1 + erf(z)
# would cancel. Measured against 50-digit references on a dense grid of
# [-7, 7]: at most 1 ulp in float64 (2 ulp against math.erf).

_ERF_SMALL = (
    1.1283791670955126, -0.37612638903183543, 0.11283791670945006, -0.02686617064323777,
    0.0052239776071164225, -0.0008548325975389692, 0.00012055294904839707,
    -1.492473690741966e-05, 1.6447424703317362e-06, -1.6208483801871705e-07,
    1.3720064546777686e-08, -7.795898827002142e-10,
)
_ERFC_LARGE = (
    0.41099837287518415, 0.17190473683520147, 0.051458943911773254, 0.008316570615412558,
    -0.0007068666933824646, -0.0006285090885591329, -1.8394631092024868e-05,
    5.2458597126667345e-05, 3.1718570514655384e-06, -5.5916448262950145e-06,
    -1.0513778271897597e-07, 7.016204419534445e-07, -6.344751677932825e-08,
    -8.978011400413335e-08, 2.416558704285319e-08, 9.678480114261297e-09,
    -5.781812224290339e-09, -5.942253690629997e-10, 9.761440512671954e-10,
    -9.021790537570793e-12, -9.035945667775405e-11,
)


def _erf_small(z: np.ndarray) -> np.ndarray:
    """erf(z) for |z| < 1."""
    return z * _horner(_ERF_SMALL, z * z)


def _erfc_large(a: np.ndarray, minus_a_squared: np.ndarray | None = None) -> np.ndarray:
    """erfc(a) for a >= 1 (relative accuracy kept down to underflow).

    exp(-a^2) amplifies the rounding error of a^2 by a^2, so a caller that can
    form -a^2 more exactly than from a rounded ``a`` passes it in.
    """
    t = 2.0 / (2.0 + a)
    q = _horner(_ERFC_LARGE, 3.0 * t - 1.0)
    q *= t
    q *= np.exp(-(a * a) if minus_a_squared is None else minus_a_squared)
    return q


def erf(x: np.ndarray) -> np.ndarray:
    """The error function erf(x) = 2/sqrt(pi) ∫_0^x exp(-t^2) dt, elementwise, in x's dtype.

    Float64: within 1 ulp of the correctly rounded value (50-digit reference).
    Float32 inputs run the same polynomials in float32 (error ~1e-7).
    """
    shape = np.shape(x)
    x = _check_float(x, "erf")
    a = np.abs(x)
    small = a < 1.0
    big = ~small
    out = np.empty_like(x)
    out[small] = _erf_small(x[small])
    out[big] = np.copysign(1.0 - _erfc_large(a[big]), x[big])
    return out.reshape(shape)


def _normal_cdf_accurate(x: np.ndarray) -> np.ndarray:
    """Φ(x) = (1 + erf(x / sqrt 2)) / 2 in float64, with relative accuracy in both tails.

    With z = x / sqrt 2: near zero Φ = 1/2 + erf(z)/2; in the tails the smaller
    of Φ(x), 1 - Φ(x) is erfc(|z|)/2, computed without cancellation. Relative
    error: a few ulp for |x| < 3, growing as x² · 1e-16 from exp(-x²/2) in the
    far tail (6e-14 at x = -37, where Φ is 1e-300).
    """
    z = x * _SQRT_HALF
    a = np.abs(z)
    small = a < 1.0
    big = ~small
    phi = np.empty_like(x)
    phi[small] = 0.5 + 0.5 * _erf_small(z[small])
    xb = x[big]
    tail = 0.5 * _erfc_large(a[big], -0.5 * (xb * xb))  # T = Φ(-|x|); z² = x²/2 from exact x
    phi[big] = tail + (xb >= 0.0) * (1.0 - 2.0 * tail)  # T if x < 0 else 1 - T
    return phi


# Φ(-|x|) = exp(-x^2 / 2) M(u),  u = |x| / (|x| + c),  c = 2.25 sqrt 2.
# M (degree 5 in u) minimises the maximum absolute error of Φ(-|x|) over the
# whole half-line (a minimax fit by Lawson's iteration, made for this module);
# that error is 1.1e-8, below float32 rounding, and evaluated in float32 the
# whole formula is within about 1e-7 of Φ. u (not 1 - u) is the variable so
# that it is exact near x = 0, where Φ is largest.
_MILLS_C = 2.25 * math.sqrt(2.0)
_MILLS = (
    0.4999999893018373, -1.2694239590953866, 1.2617206100970153, -0.4897424906237792,
    -0.13153099589288483, 0.136488043009396,
)


def _normal_cdf_fast(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Φ(x) in about twenty cheap elementwise passes, with no branches or masks.

    Returns (Φ(x), a spare scratch array shaped like x), so the caller can
    write its result without allocating: fresh pages cost as much as a pass.
    """
    a = np.abs(x)  # |x|
    u = a + _MILLS_C
    np.divide(a, u, out=u)  # u = |x| / (|x| + c) ∈ [0, 1)
    np.square(a, out=a)
    a *= -0.5
    np.exp(a, out=a)  # exp(-x^2 / 2)
    tail = _horner(_MILLS, u)
    tail *= a  # T = Φ(-|x|)
    # Φ(x) = T for x < 0 and 1 - T for x >= 0:  Φ = T + [x >= 0] (1 - 2T).
    # (Arithmetic, not np.where: a data-dependent select is ~30x slower than a
    # multiply here, and T stays exact on the negative side.)
    flip = np.multiply(tail, -2.0, out=a)
    flip += 1.0
    flip *= x >= 0
    tail += flip
    return tail, u


# --------------------------------------------------------------------------- ReLU


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = max(x, 0)."""
    shape = np.shape(x)
    x = _check_float(x, "relu")
    return np.maximum(x, 0.0).reshape(shape), x


def relu_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """y = max(x, 0)  ->  dy/dx = [x > 0]  (0 is taken at the kink x = 0)."""
    x = cache
    return np.multiply(dout, x > 0.0, dtype=x.dtype).reshape(np.shape(dout))


# ------------------------------------------------------------------------ sigmoid


def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = 1 / (1 + exp(-x)).

    For very negative x, exp(-x) overflows to +inf and 1 / (1 + inf) = 0, which
    is the correctly rounded result (the true value is below the smallest
    normal number); only that overflow flag is silenced. Everywhere else the
    formula is accurate to a few ulp, relative, in both tails.
    """
    shape = np.shape(x)
    x = _check_float(x, "sigmoid")
    y = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(y, out=y)
    y += 1.0
    np.reciprocal(y, out=y)
    return y.reshape(shape), y


def sigmoid_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """y = σ(x)  ->  dy/dx = σ(x)(1 - σ(x)) = y (1 - y), a function of the output alone."""
    y = cache
    dx = np.subtract(1.0, y)
    dx *= y
    dx *= dout
    return dx.reshape(np.shape(dout))


# --------------------------------------------------------------------------- tanh


def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = tanh(x)."""
    shape = np.shape(x)
    x = _check_float(x, "tanh")
    y = np.tanh(x)
    return y.reshape(shape), y


def tanh_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """y = tanh(x)  ->  dy/dx = 1 - tanh(x)^2 = 1 - y^2."""
    y = cache
    dx = np.square(y)
    np.subtract(1.0, dx, out=dx)
    dx *= dout
    return dx.reshape(np.shape(dout))


# The GELU chains run over this many elements at a time: the chain's passes over one chunk
# (and its scratch) then stay in a core's L2 cache instead of streaming the whole
# (rows, d_ff) array through memory once per pass (measured on 2048 x 1536 float32, one
# thread: 1.3x the forward, 1.6x the backward). Chunks change no result: every element goes
# through the same operations in the same order.
CHUNK_ELEMENTS = 1 << 16


def _chunks(n: int) -> list[slice]:
    """0 .. n in slices of ``CHUNK_ELEMENTS``."""
    return [slice(start, start + CHUNK_ELEMENTS) for start in range(0, n, CHUNK_ELEMENTS)]


def _over_chunks(body: Callable[[slice], None], n: int) -> None:
    """``body(c)`` for every chunk c of 0 .. n, spread over the cores an unsplit pass may
    use (``numpyllm.nn.parallel.on_cores``): chunks are independent, each writing its own
    slice of the outputs, so the result is the same on any number of threads."""
    from numpyllm.nn.parallel import on_cores  # here: numpyllm.nn imports this module

    on_cores(body, _chunks(n), elements=n)


def _flat_backward_views(
    x: np.ndarray, dout: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The flat views a chunked backward walks: x, dout (broadcast to x's shape), and a new
    dx with its flat view (the array to return)."""
    g = np.asarray(dout)
    g_flat = (g if g.shape == x.shape else np.broadcast_to(g, x.shape)).reshape(-1)
    dx = np.empty(x.shape, dtype=x.dtype)
    return x.reshape(-1), g_flat, dx, dx.reshape(-1)


# --------------------------------------------------------------------- GELU (erf)


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """y = x Φ(x) = x (1 + erf(x / sqrt 2)) / 2, the exact GELU (BERT's "gelu").

    Φ is the standard normal CDF. Float64 evaluates it through :func:`erf`'s
    polynomials (about 1 ulp); other dtypes use the float32 formula of
    :func:`_normal_cdf_fast` (within 1e-7). The cache keeps x and Φ(x).
    """
    shape = np.shape(x)
    x = _check_float(x, "gelu")
    if x.dtype == np.float64:
        phi = _normal_cdf_accurate(x)
        return (x * phi).reshape(shape), (x, phi)
    # Chunk by chunk (see ``CHUNK_ELEMENTS``): the fast formula's twenty passes stay in cache.
    flat = x.reshape(-1)  # a copy only if x is not contiguous; only read
    y = np.empty(x.shape, dtype=x.dtype)
    phi = np.empty(x.shape, dtype=x.dtype)
    y_flat, phi_flat = y.reshape(-1), phi.reshape(-1)

    def chunk(c: slice) -> None:
        phi_c, _ = _normal_cdf_fast(flat[c])
        phi_flat[c] = phi_c
        np.multiply(flat[c], phi_c, out=y_flat[c])

    _over_chunks(chunk, flat.size)
    return y.reshape(shape), (x, phi)


def gelu_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    """y = x Φ(x)  ->  dy/dx = Φ(x) + x φ(x),  φ(x) = exp(-x^2 / 2) / sqrt(2π).

    Product rule, with Φ' = φ, the standard normal density. Seven elementwise passes,
    chunk by chunk (see ``CHUNK_ELEMENTS``).
    """
    x, phi = cache
    shape = np.shape(dout)
    flat, g_flat, dx, dx_flat = _flat_backward_views(x, dout)
    phi_flat = phi.reshape(-1)

    def chunk(c: slice) -> None:
        xc, d = flat[c], dx_flat[c]
        np.square(xc, out=d)
        d *= -0.5
        np.exp(d, out=d)
        d *= xc
        d *= _INV_SQRT_2PI  # x φ(x)
        d += phi_flat[c]
        d *= g_flat[c]

    _over_chunks(chunk, flat.size)
    return dx.reshape(shape)


# -------------------------------------------------------------------- GELU (tanh)

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


def gelu_tanh_forward(x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """y = x (1 + tanh(c (x + k x^3))) / 2,  c = sqrt(2/π),  k = 0.044715 (GPT-2's "gelu_new").

    Written as y = x p with p = (1 + t) / 2 and t = tanh(x (c + ck x^2)):
    eight elementwise passes, chunk by chunk (see ``CHUNK_ELEMENTS``), and p is
    exactly what the backward needs.
    """
    shape = np.shape(x)
    x = _check_float(x, "gelu_tanh")
    flat = x.reshape(-1)  # a copy only if x is not contiguous; only read
    y = np.empty(x.shape, dtype=x.dtype)
    p = np.empty(x.shape, dtype=x.dtype)
    y_flat, p_flat = y.reshape(-1), p.reshape(-1)

    def chunk(c: slice) -> None:
        xc, pc = flat[c], p_flat[c]
        np.square(xc, out=pc)
        pc *= _GELU_C * _GELU_K
        pc += _GELU_C
        pc *= xc  # c (x + k x^3)
        np.tanh(pc, out=pc)  # t
        pc *= 0.5
        pc += 0.5  # p = (1 + t) / 2
        np.multiply(xc, pc, out=y_flat[c])

    _over_chunks(chunk, flat.size)
    return y.reshape(shape), (x, p)


def gelu_tanh_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    """y = x p,  p = (1 + t) / 2,  t = tanh(v),  v = c (x + k x^3).

        dy/dx = p + x dp/dx,   dp/dx = (1 - t^2) / 2 · dv/dx = (1 - t^2) / 2 · c (1 + 3k x^2)

    and with t = 2p - 1, (1 - t^2) / 2 = 2 p (1 - p), so

        dy/dx = p + p (1 - p) · x · (2c + 6ck x^2).

    Eight elementwise passes, chunk by chunk as the forward, with a chunk of scratch.
    """
    x, p = cache
    shape = np.shape(dout)
    flat, g_flat, dx, dx_flat = _flat_backward_views(x, dout)
    p_flat = p.reshape(-1)

    def chunk(c: slice) -> None:
        xc, pc, d = flat[c], p_flat[c], dx_flat[c]
        q = np.empty_like(xc)  # per chunk: the chunks may run on several threads at once
        np.square(xc, out=d)
        d *= 6.0 * _GELU_C * _GELU_K
        d += 2.0 * _GELU_C
        d *= xc  # x (2c + 6ck x^2)
        np.subtract(1.0, pc, out=q)
        q *= pc  # p (1 - p)
        d *= q
        d += pc
        d *= g_flat[c]

    _over_chunks(chunk, flat.size)
    return dx.reshape(shape)
