r"""LoRA: a frozen linear map plus a trainable low-rank update (Hu et al., 2021).

With the base weight W stored (in, out) as every numpyllm projection stores it, and the
adapter's matrices in PEFT's layout, A (r, in) and B (out, r)::

    u = dropout(x)                      (N, in)    the adapter's own dropout, not the base's
    h = u A^T                           (N, r)     down to rank r
    y = x W + b + s * h B^T             (N, out)   s = alpha / r

which is x (W + s A^T B^T) + b: the base weight plus a rank-r update of scale s. (In
torch's (out, in) layout the update reads s * B A, the paper's formula.)

Backward, with g = dL/dy (N, out). Every term is a product of matrices, so each gradient is
the upstream gradient pushed back through one factor at a time:

    y_no = ... + s * sum_r h_nr B_or
        dL/dB_or = s * sum_n g_no h_nr        ->  dB = s * g^T h        (out, r)
        dL/dh_nr = s * sum_o g_no B_or        ->  dh = s * g B          (N, r)
    h_nr = sum_i u_ni A_ri
        dL/dA_ri = sum_n dh_nr u_ni           ->  dA = dh^T u           (r, in)
        dL/du_ni = sum_r dh_nr A_ri           ->  du = dh A             (N, in)
    u = x * m / (1 - p)  (m the kept mask)    ->  dx_lora = du * m / (1 - p)
    base: dx_base = g W^T,  dW = x^T g,  db = sum_n g_n

    dx = g W^T + dropout_backward(dh A)

Cost. A frozen W needs only dx = g W^T: the x^T g product (as large as the forward's
matmul) is never formed. The adapter adds four thin products of N x in x r or N x out x r
multiply-adds each, small against the base's N x in x out when r << in, out.

Without dropout (p = 0, or evaluation) u = x, and both full-size products take the update
folded into the weight, W' = W + s A^T B^T (in x out x r multiply-adds, once per call):

    y  = x W + b + s x A^T B^T  = x W' + b
    dx = g W^T + s g B A        = g W'^T

so the layer makes the same two big products as a plain frozen linear, no (N, out) delta
or (N, in) du array and no sums of them, and the adapter's own cost is the thin products
of its gradients: h = x A^T, dB = s g^T h, dh = s g B, dA = dh^T x
(``lora_weight``, ``lora_adapter_gradients``).

Why B starts at zero: then s * h B^T = 0 and the adapted model computes exactly the base
model's function at step 0, while dB = s g^T h is not zero (h is not), so training moves B
first and A follows. (Were both random, fine-tuning would start from a perturbed model; were
both zero, dA = s (g B)^T u and dB = s g^T (u A^T) would both vanish and nothing would move.)

What s = alpha / r does: the update's scale is independent of the rank. A's rows start with
variance ~1/in, so h = u A^T has entries of a size that does not grow with r, while h B^T
sums r of them: dividing by r keeps the update's size (and the learning rate that suits it)
about the same when r changes; alpha is then the one knob for the update's strength.
"""

from __future__ import annotations

import numpy as np

from numpyllm.functional.dropout import dropout_backward, dropout_forward
from numpyllm.functional.linear import linear_backward, linear_forward

# The thin products below are written with both operands' long axis contiguous: BLAS runs a
# product with r = 8 columns 2-2.5x slower when one operand is a transposed view (measured,
# OpenBLAS, one thread: u @ A.T against u @ copy(A.T), g.T @ h against (h.T @ g).T).


def _down(u: np.ndarray, lora_a: np.ndarray) -> np.ndarray:
    """h = u A^T (N, r), with A^T copied contiguous first (r x in numbers, nothing)."""
    return u @ np.ascontiguousarray(lora_a.T)  # (N, in) @ (in, r)


def _outer(dout: np.ndarray, h: np.ndarray) -> np.ndarray:
    """g^T h (out, r), computed as (h^T g)^T so that BLAS reads g's rows as they lie."""
    return (h.T @ dout).T  # ((r, N) @ (N, out))^T


def lora_delta_forward(
    u: np.ndarray, lora_a: np.ndarray, lora_b: np.ndarray, scaling: float
) -> tuple[np.ndarray, np.ndarray]:
    """The adapter's term s * u A^T B^T and h = u A^T.

    Shapes: u (N, in), A (r, in), B (out, r) -> delta (N, out), h (N, r).
    """
    h = _down(u, lora_a)  # (N, in) @ (in, r) -> (N, r)
    hs = h * h.dtype.type(scaling)  # s folded into the thin (N, r) factor, not the (N, out) one
    return hs @ lora_b.T, h  # (N, r) @ (r, out) -> (N, out)


def lora_weight(
    weight: np.ndarray, lora_a: np.ndarray, lora_b: np.ndarray, scaling: float
) -> np.ndarray:
    """W' = W + s A^T B^T, the weight with the update folded in (in, out).

    Shapes: W (in, out), A (r, in), B (out, r) -> (in, out). With B = 0 it equals W exactly.
    """
    s = lora_a.dtype.type(scaling)
    return weight + (lora_a.T * s) @ lora_b.T  # (in, out) + (in, r) @ (r, out)


def lora_adapter_gradients(
    dout: np.ndarray, u: np.ndarray, lora_a: np.ndarray, lora_b: np.ndarray, scaling: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dA, dB) of y = ... + s * u A^T B^T, without du (see the module docstring): the
    adapter's share of a backward whose dx went through the folded weight.

    Shapes: dout (N, out), u (N, in) -> dA (r, in), dB (out, r).
    """
    s = dout.dtype.type(scaling)
    hs = _down(u, lora_a)  # (N, in) @ (in, r) -> (N, r)
    hs *= s
    dlora_b = _outer(dout, hs)  # s * g^T h: (out, N) @ (N, r) -> (out, r)
    dh = dout @ lora_b  # (N, out) @ (out, r) -> (N, r)
    dh *= s
    dlora_a = dh.T @ u  # (r, N) @ (N, in) -> (r, in)
    return dlora_a, dlora_b


def lora_delta_backward(
    dout: np.ndarray,
    u: np.ndarray,
    h: np.ndarray,
    lora_a: np.ndarray,
    lora_b: np.ndarray,
    scaling: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of delta = s * u A^T B^T (see the module docstring): (du, dA, dB).

    Shapes: dout (N, out), u (N, in), h = u A^T (N, r) -> du (N, in), dA (r, in), dB (out, r).
    """
    s = dout.dtype.type(scaling)
    dlora_b = _outer(dout, h * s)  # s * g^T h: (out, N) @ (N, r) -> (out, r)
    dh = dout @ lora_b  # (N, out) @ (out, r) -> (N, r)
    dh *= s
    dlora_a = dh.T @ u  # (r, N) @ (N, in) -> (r, in)
    du = dh @ lora_a  # (N, r) @ (r, in) -> (N, in)
    return du, dlora_a, dlora_b


def lora_forward(
    x: np.ndarray,
    weight: np.ndarray,
    lora_a: np.ndarray,
    lora_b: np.ndarray,
    bias: np.ndarray | None = None,
    scaling: float = 1.0,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
    training: bool = True,
) -> tuple[np.ndarray, tuple]:
    """y = x W + b + s * dropout(x) A^T B^T (see the module docstring).

    Shapes: x (..., in), W (in, out), A (r, in), B (out, r), b (out,) -> y (..., out).
    ``dropout`` is the adapter's dropout probability (drawn from ``rng`` in training).
    """
    in_features = weight.shape[0]
    r = lora_a.shape[0]
    if x.shape[-1] != in_features or lora_a.shape != (r, in_features):
        raise ValueError(
            f"lora: x (..., {x.shape[-1]}), weight {weight.shape} and lora_A {lora_a.shape} "
            f"must agree on the input size; lora_A is (r, in)"
        )
    if lora_b.shape != (weight.shape[1], r):
        raise ValueError(
            f"lora: lora_B must be (out, r) = {(weight.shape[1], r)}, got {lora_b.shape}"
        )
    y, base_cache = linear_forward(x, weight, bias)  # (..., out)
    x2 = x.reshape(-1, in_features)  # (N, in)
    u, mask = dropout_forward(x2, dropout, rng, training=training)
    delta, h = lora_delta_forward(u, lora_a, lora_b, scaling)  # (N, out), (N, r)
    y.reshape(-1, y.shape[-1])[...] += delta
    return y, (base_cache, mask, h, lora_a, lora_b, scaling)


def lora_backward(
    dout: np.ndarray, cache: tuple, need_weight: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of ``lora_forward``: (dx, dW, db, dA, dB); see the module docstring.

    ``need_weight=False`` (the usual case: W frozen) returns None for dW without forming
    x^T g. db is None when there was no bias.
    """
    base_cache, mask, h, lora_a, lora_b, scaling = cache
    x = base_cache[0]
    dx, dweight, dbias = linear_backward(dout, base_cache, need_weight=need_weight)
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    u = x2 if mask is None else x2 * mask  # dropout(x), rebuilt from its scaled mask
    g2 = dout.reshape(-1, dout.shape[-1])  # (N, out)
    du, dlora_a, dlora_b = lora_delta_backward(g2, u, h, lora_a, lora_b, scaling)
    dx.reshape(-1, x.shape[-1])[...] += dropout_backward(du, mask)
    return dx, dweight, dbias, dlora_a, dlora_b
