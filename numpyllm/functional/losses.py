"""Losses: cross-entropy from logits, binary cross-entropy from logits, mean squared error.

Each forward returns the loss as a 0-d array of the prediction's dtype (so
float32 stays float32; ``float(loss)`` gives a Python number). Each backward
takes ``dloss`` (the upstream gradient of the scalar, 1.0 for the loss itself)
and returns the gradient w.r.t. the logits or prediction, in their dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from numpyllm.functional.activations import sigmoid_forward


def _check_float(x: np.ndarray, name: str, op: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{op}: {name} must be floating-point, got dtype {x.dtype}")
    return x


def _same_shape_target(pred: np.ndarray, target: np.ndarray, op: str) -> np.ndarray:
    """The target as an array of pred's dtype and shape (no broadcasting: a mismatch is a bug)."""
    target = np.asarray(target)
    if target.shape != pred.shape:
        raise ValueError(f"{op}: targets have shape {target.shape}, predictions {pred.shape}")
    if not (np.issubdtype(target.dtype, np.number) or target.dtype == np.bool_):
        raise TypeError(f"{op}: targets must be numeric, got dtype {target.dtype}")
    if pred.size == 0:
        raise ValueError(f"{op}: the mean over an empty array is undefined (shape {pred.shape})")
    return target.astype(pred.dtype, copy=False)


# -------------------------------------------------------------------- cross-entropy

# Cross-entropy runs over blocks of whole rows of about this many logits: the passes over
# one block (max, shift, exp, sum; the backward's scaling) then find it in a core's L2
# cache, and an unsplit pass spreads the blocks over its cores.
ROW_BLOCK_ELEMENTS = 1 << 18


def _over_row_blocks(run: Callable[[slice], None], rows: int, width: int) -> None:
    """``run(block)`` for the blocks of whole rows of an (rows, width) array, in turn or over
    the cores (``numpyllm.nn.parallel.on_cores``). Each block writes only its own rows, so
    the result is the same on any number of threads."""
    step = max(1, ROW_BLOCK_ELEMENTS // max(width, 1))
    blocks = [slice(start, start + step) for start in range(0, rows, step)]
    if len(blocks) <= 1:  # no thread hand-off to pay
        run(slice(0, rows))
        return
    from numpyllm.nn.parallel import on_cores  # here: numpyllm.nn imports this module

    on_cores(run, blocks, elements=rows * width)


def cross_entropy_forward(
    logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100
) -> tuple[np.ndarray, tuple]:
    """L = (1/n) Σ_{valid positions p} -log softmax(z_p)[t_p],  n = number of valid positions.

    Shapes: logits (..., V), targets int (...). A position whose target equals
    ``ignore_index`` is left out of both the sum and n; if every position is
    ignored, L = 0 (and the gradient is zero), not 0/0.

    With m_p = max_j z_pj:  -log softmax(z_p)[t] = log Σ_j exp(z_pj - m_p) - (z_pt - m_p),
    where every exponent is <= 0 and the sum is >= 1: finite for any finite
    logits (±1e4 included). The target's shifted logit is read before the
    exponentials overwrite the buffer; the cache keeps exp(z - m) and its row
    sums, from which the backward builds softmax in one pass.
    """
    logits = _check_float(logits, "logits", "cross_entropy")
    targets = np.asarray(targets)
    if logits.ndim == 0:
        raise ValueError("cross_entropy: logits must have a class axis (..., V), got a scalar")
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"cross_entropy: targets must have an integer dtype, got {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: targets have shape {targets.shape}, expected {logits.shape[:-1]} "
            f"(logits {logits.shape} without the class axis)"
        )
    vocab = logits.shape[-1]
    z = logits.reshape(-1, vocab)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= vocab))
    if bad.any():
        first = int(t[np.flatnonzero(bad)[0]])
        raise ValueError(
            f"cross_entropy: target {first} is out of range for {vocab} classes "
            f"(expected 0..{vocab - 1}, or ignore_index={ignore_index})"
        )
    n_valid = int(valid.sum())
    safe_t = np.where(valid, t, 0)  # (N,) any in-range class for ignored rows

    e = np.empty(z.shape, dtype=z.dtype)  # (N, V): the shifted logits, then their exp
    target_logit = np.empty(len(z), dtype=z.dtype)  # (N,) z_pt - m_p
    sums = np.empty(len(z), dtype=z.dtype)

    def block(rows: slice) -> None:
        zb = z[rows]
        eb = np.subtract(zb, zb.max(axis=1, keepdims=True, initial=-np.inf), out=e[rows])  # <= 0
        target_logit[rows] = eb[np.arange(len(eb)), safe_t[rows]]  # read before the exp
        np.exp(eb, out=eb)
        sums[rows] = eb.sum(axis=1)  # each >= 1 (pairwise summation: accurate for large V)

    _over_row_blocks(block, len(z), vocab)
    nll = np.log(sums) - target_logit  # (N,)
    total = np.sum(nll[valid], dtype=np.float64)
    loss = total / n_valid if n_valid else 0.0
    return np.asarray(loss, dtype=logits.dtype), (e, sums, safe_t, valid, n_valid, logits.shape)


def cross_entropy_backward(
    dloss: float | np.ndarray, cache: tuple, overwrite: bool = False
) -> np.ndarray:
    """dL/dz_pj = (softmax(z_p)_j - [j = t_p]) · dloss / n for valid p, and 0 for ignored p.

    From -log softmax(z)[t] = log Σ_j exp(z_j) - z_t:  d/dz_j = softmax(z)_j - [j = t].
    Fused: softmax's Jacobian never appears. One pass scales exp(z - m) by
    dloss / (n · Σ exp) per row (0 for ignored rows); then 1·dloss/n is
    subtracted at each valid target. ``overwrite=True`` writes the gradient into the cache's
    exp(z - m) buffer: no new (N, V) array, and the cache is spent.
    """
    e, sums, safe_t, valid, n_valid, shape = cache
    scale = float(dloss) / max(n_valid, 1)  # every row ignored: row_scale is 0, dlogits 0
    row_scale = ((valid * scale) / sums).astype(e.dtype, copy=False)  # (N,), 0 for ignored
    dlogits = e if overwrite else np.empty(e.shape, dtype=e.dtype)  # (N, V)

    def block(rows: slice) -> None:
        np.multiply(e[rows], row_scale[rows, None], out=dlogits[rows])

    _over_row_blocks(block, len(e), e.shape[-1])
    dlogits[np.flatnonzero(valid), safe_t[valid]] -= scale
    return dlogits.reshape(shape)


# ------------------------------------------------------------------------------ BCE


def bce_with_logits_forward(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, tuple]:
    """L = mean( -y log σ(x) - (1 - y) log(1 - σ(x)) ),  targets y in [0, 1].

    With log σ(x) = -log(1 + exp(-x)) and log(1 - σ(x)) = -x - log(1 + exp(-x)),
    each term is x - x y + log(1 + exp(-x)), and rewriting
    log(1 + exp(-x)) = max(-x, 0) + log1p(exp(-|x|)) gives the stable form

        ℓ = max(x, 0) - x y + log1p(exp(-|x|)),

    whose exponential never exceeds 1 (finite for logits of ±1e4).
    """
    x = _check_float(logits, "logits", "bce_with_logits")
    y = _same_shape_target(x, targets, "bce_with_logits")
    if y.min() < 0 or y.max() > 1:
        raise ValueError(
            f"bce_with_logits: targets must lie in [0, 1], got values in [{y.min()}, {y.max()}]"
        )
    ell = np.abs(x)
    np.negative(ell, out=ell)
    np.exp(ell, out=ell)
    np.log1p(ell, out=ell)  # log1p(exp(-|x|))
    ell += np.maximum(x, 0.0)
    ell -= x * y
    loss = np.sum(ell, dtype=np.float64) / x.size
    return np.asarray(loss, dtype=x.dtype), (x, y)


def bce_with_logits_backward(dloss: float | np.ndarray, cache: tuple) -> np.ndarray:
    """dℓ/dx = σ(x) - y (from d/dx [x - x y + log(1 + exp(-x))] = 1 - y - (1 - σ(x))),

    so dL/dx = (σ(x) - y) · dloss / n.
    """
    x, y = cache
    dx, _ = sigmoid_forward(x)
    dx -= y
    dx *= float(dloss) / x.size
    return dx


# ------------------------------------------------------------------------------ MSE


def mse_forward(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, tuple]:
    """L = (1/n) Σ_i (pred_i - target_i)², over every element (shapes must match exactly)."""
    pred = _check_float(pred, "pred", "mse")
    diff = pred - _same_shape_target(pred, target, "mse")
    flat = diff.reshape(-1)
    loss = float(np.dot(flat, flat)) / diff.size
    return np.asarray(loss, dtype=pred.dtype), (diff,)


def mse_backward(dloss: float | np.ndarray, cache: tuple) -> np.ndarray:
    """dL/dpred_i = 2 (pred_i - target_i) / n · dloss."""
    (diff,) = cache
    return diff * (2.0 * float(dloss) / diff.size)
