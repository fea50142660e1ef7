"""Scaled dot-product attention, forward and backward, for any number of leading axes.

    S   = scale * Q K^T + B          scores        (..., Tq, Tk)
    S_ij = -inf where query i may not attend to key j (causal rule or mask)
    P   = softmax(S) along the keys  attention     (..., Tq, Tk)
    out = P V                        output        (..., Tq, dv)

Q (..., Tq, d), K (..., Tk, d), V (..., Tk, dv). The leading axes (batch,
heads, ...) broadcast as in ``np.matmul``, so a K shared by every head may be
passed with a head axis of size 1; its gradient is summed back to that shape.

Masking is done by writing -inf into S (added from a 0 / -inf table), never
a finite sentinel such as -1e4: exp(-inf) is exactly 0, so a masked key gets
exactly zero weight however large the other scores are. A query row with
nothing to attend to (every S_ij = -inf) would be 0/0; it is defined to give
P = 0 and so an output row of zeros.

Causal attention with Tq != Tk aligns the queries to the *end* of the keys:
query i may attend to key j iff j <= i + (Tk - Tq). With a KV cache the keys
are the Tk - Tq earlier tokens followed by the Tq new ones, and this is the
ordinary "no peeking at the future" rule for the new tokens. When Tq > Tk the
first Tq - Tk queries see no key and output zeros.

Blocked attention (memory O(T), not O(T^2)): when Tq * Tk exceeds block_size^2, the
queries and the keys are taken ``block_size`` at a time and the softmax is computed
online (FlashAttention). For each query block, going over the key blocks j = 1, 2, ...:

    S_j   = scale * Q K_j^T + B_j                       (..., bq, bk), one block
    m_j   = max(m_{j-1}, rowmax(S_j))                   running row maximum
    l_j   = l_{j-1} exp(m_{j-1} - m_j) + rowsum(exp(S_j - m_j))
    acc_j = acc_{j-1} exp(m_{j-1} - m_j) + exp(S_j - m_j) V_j

and at the end out = acc / l and L = m + log l, the row log-sum-exp. Rescaling by
exp(m_{j-1} - m_j) turns sums taken against an old maximum into sums against the new one,
so the result is the one softmax over all keys, to rounding. Causal attention skips every
key block that lies wholly in a query block's future (half the work) and masks only the
blocks on the diagonal. The backward rebuilds each block's P = exp(S - L) from the stored
L and adds that block's share into dQ, dK, dV. No (Tq x Tk) array is ever made: the
largest temporaries are two (bq, bk) blocks per thread (one head at a time).

Per-row shifts cost no pass of their own: with one column appended to each side,

    [scale Q, -m] [K, 1]^T = scale Q K^T - m        (S - m, or S - L in the backward)
    [g, -rowdot] [V, 1]^T  = g V^T - rowdot         (the backward's dP - rowdot)
    exp(S - m) [V, 1]      = [exp(S - m) V, rowsum(exp(S - m))]

so a block costs the matmuls, one exp and (forward) one row max or (backward) one multiply.
The forward's shift m need not be the row maximum itself, only a number no more than a few
units below it (exp must not overflow): it is moved only when a block's scores rise more
than ``_LAZY_RESCALE`` above it, which after a row's first block is rare.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import overload

import numpy as np


def _l2_cache_bytes() -> int | None:
    """The size of one core's level-2 cache as Linux reports it; None elsewhere."""
    from pathlib import Path

    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data") and size[:-1].isdigit():
            return int(size[:-1]) << {"K": 10, "M": 20}.get(size[-1], 0)
    return None


def _block_size_for(l2_bytes: int | None) -> int:
    """The largest multiple of 64, from 256 to 512, whose (block x block) float32 score block
    fits in one core's L2 cache; 256 when the cache size is unknown.

    Why the cache: each block is written by a matmul and read back by the exp and the
    multiply of the backward, which run at L2 speed only if the block stays there. Why not
    smaller: every block pays ~15 NumPy calls of Python overhead and smaller matmuls. Why not
    above 512: not measured. Measured on a Zen 4 core (1 MiB L2, one thread, T = 8,192, load
    from other jobs): 256 -> 0.88x sdpa's speed, 384 -> 0.92x, 512 -> 0.94x.
    """
    if not l2_bytes:
        return 256
    fits = int(math.isqrt(l2_bytes // 4)) // 64 * 64
    return max(256, min(512, fits))


#: Queries and keys per block of blocked attention, chosen from the L2 cache's size. A problem
#: whose score array has at most DEFAULT_BLOCK_SIZE^2 entries per head runs as one block (the
#: plain path). Callers that own a memory policy pass their own ``block_size``.
DEFAULT_BLOCK_SIZE = _block_size_for(_l2_cache_bytes())


def _causal_additive_mask(tq: int, tk: int, dtype: np.dtype) -> np.ndarray | None:
    """(Tq, Tk) table of 0 (may attend) and -inf (key j > i + Tk - Tq); None if nothing is masked.

    One query (a generation step) sees every key: no table, and no entry in the shared
    tables for each of the step's growing key lengths.
    """
    return None if tq <= 1 else _causal_table(tq, tk, dtype)


def _causal_table(tq: int, tk: int, dtype: np.dtype) -> np.ndarray:
    """The whole (Tq, Tk) causal table: key j is blocked for query i iff j > i + (Tk - Tq)."""
    return _band_table(tq, tk, tk - tq, dtype)


@lru_cache(maxsize=32)
def _band_table(rows: int, cols: int, diagonal: int, dtype: np.dtype) -> np.ndarray:
    """(rows, cols) table of 0, and -inf where column j > row i + ``diagonal``.

    A pure function of its arguments, so it is built once and shared; it is made read-only
    so a caller cannot corrupt the shared copy. Adding it to S is one cheap broadcast pass
    (several times faster than a masked ``np.copyto``). Blocked attention takes the piece of
    the causal table that falls on one (query block, key block) pair from here too.
    """
    blocked = np.triu(np.ones((rows, cols), dtype=bool), k=diagonal + 1)  # j > i + diagonal
    table = np.where(blocked, dtype.type(-np.inf), dtype.type(0))
    table.flags.writeable = False
    return table


def _additive_mask(
    causal: bool, mask: np.ndarray | None, tq: int, tk: int, dtype: np.dtype
) -> np.ndarray | None:
    """The causal rule and the boolean mask as one 0 / -inf table; None when nothing is masked."""
    causal_table = _causal_additive_mask(tq, tk, dtype) if causal else None
    if mask is None:
        return causal_table
    allowed = mask
    if causal_table is not None:
        allowed = mask & (causal_table == 0)  # broadcast: (..., Tq | 1, Tk | 1) & (Tq, Tk)
    return np.where(allowed, dtype.type(0), dtype.type(-np.inf))


#: Causal attention's one-block path takes its query rows in up to ``_CHUNKS`` chunks of at
#: least ``_CHUNK_ROWS`` rows (see ``causal_chunks``).
_CHUNKS = 4
_CHUNK_ROWS = 64


def causal_chunks(
    tq: int, tk: int, causal: bool, offset: int | None = None
) -> list[tuple[slice, slice]]:
    """The query rows of one-block attention in chunks, each with the keys it may see.

    Causal and end-aligned, rows [r0, r1) see keys j < r1 + Tk - Tq and no others, so a
    chunk's scores stop at its last row's last key: the part of the future right of that
    is never computed. n equal chunks compute (n + 1) / 2n of the (Tq x Tk) scores when
    Tq = Tk, 5/8 for n = 4, and every matmul and pass over them shrinks alike. Why not more
    chunks: each pays a dozen NumPy calls, whose Python overhead two threads also contend
    for (the GIL). Measured on a Zen 4 core, grouped-query forward at T = 256 (d = 48, 32
    heads): one chunk 8.0 ms, two 5.9 ms, four 5.1 ms. Not causal: one chunk, every key.

    ``offset``: row i sees keys j <= i + offset (default Tk - Tq, end-aligned); blocked
    attention passes the offset of a block on the diagonal.
    """
    if not causal:
        return [(slice(0, tq), slice(0, tk))]
    offset = tk - tq if offset is None else offset
    n = max(1, min(_CHUNKS, tq // _CHUNK_ROWS))
    bounds = [tq * i // n for i in range(n + 1)]
    return [(slice(r0, r1), slice(0, min(tk, max(0, r1 + offset))))
            for r0, r1 in zip(bounds, bounds[1:])]  # fmt: skip


def _chunk_shape(scores_shape: tuple[int, ...], rows: slice, keys: slice) -> tuple[int, ...]:
    """The scores' shape cut to a (rows, keys) chunk."""
    return (*scores_shape[:-2], rows.stop - rows.start, keys.stop - keys.start)


def _sum_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``x`` over the axes along which an array of ``shape`` was broadcast to x.shape."""
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1
    )
    return x.sum(axis=axes, keepdims=True).reshape(shape)


def _check_inputs(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    bias: np.ndarray | None,
) -> tuple[int, ...]:
    """Validate shapes and dtypes; return the shape of the scores S after all broadcasting."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < 2:
            raise ValueError(f"attention: {name} must have shape (..., T, d), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"attention: {name} must be a floating-point array, got {a.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            f"attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention: q and k must have the same feature size d, got q {q.shape} "
            f"(d={q.shape[-1]}) and k {k.shape} (d={k.shape[-1]})"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"attention: k and v must have the same number of keys Tk, got k {k.shape} "
            f"and v {v.shape}"
        )
    try:
        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"attention: leading (batch/head) axes of q {q.shape}, k {k.shape}, v {v.shape} "
            "do not broadcast"
        ) from None
    scores_shape = (*lead, q.shape[-2], k.shape[-2])
    for name, extra in (("mask", mask), ("bias", bias)):
        if extra is None:
            continue
        try:
            full = np.broadcast_shapes(scores_shape, extra.shape)
        except ValueError:
            full = None
        if full is None or full[-2:] != scores_shape[-2:]:
            raise ValueError(
                f"attention: {name} of shape {extra.shape} does not broadcast to the scores' "
                f"shape (..., Tq, Tk) = {scores_shape}"
            )
        scores_shape = full
    if mask is not None and mask.dtype != np.bool_:
        raise TypeError(
            f"attention: mask must be boolean (True = may attend), got {mask.dtype}; "
            "pass an additive float mask as bias instead"
        )
    if bias is not None and not np.issubdtype(bias.dtype, np.floating):
        raise TypeError(f"attention: bias must be a floating-point array, got {bias.dtype}")
    return scores_shape


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    mask: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    scale: float | None = None,
    block_size: int | None = None,
) -> tuple[np.ndarray, tuple]:
    """out = softmax(scale * q k^T + bias, masked) v.

    Shapes: q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) -> out (..., Tq, dv).

    causal: query i attends to keys j <= i + Tk - Tq (end-aligned, see the module docstring).
    mask:   boolean, broadcastable to (..., Tq, Tk); True = may attend. Combined with causal.
    bias:   float added to the scores, broadcastable to (..., Tq, Tk) (T5's relative position
            bias, e.g. (1, H, Tq, Tk) or (H, Tq, Tk)); a -inf entry masks like a False in mask.
            Cast to q's dtype.
    scale:  multiplies q k^T; default 1 / sqrt(d). T5 uses 1.0.
    block_size: queries and keys per block when Tq * Tk > block_size^2 (see the module
            docstring); default ``DEFAULT_BLOCK_SIZE``. Any value gives the same result to
            rounding; it sets only the size of the temporaries and the speed.

    q, k, v must share one floating dtype, which the output keeps. The softmax
    is fused in here (not softmax.py): it works in place on the one (Tq, Tk)
    buffer per head, and subtracts the row maximum first so exp never overflows.
    The cache keeps q, k, v and the row log-sum-exp L = log sum_j exp(S_ij)
    (O(Tq) per head), not P: the backward recomputes P = exp(S - L).
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    mask = None if mask is None else np.asarray(mask)
    bias = None if bias is None else np.asarray(bias)
    scores_shape = _check_inputs(q, k, v, mask, bias)
    dtype = q.dtype
    tq, tk = q.shape[-2], k.shape[-2]
    scale = 1.0 / float(np.sqrt(q.shape[-1])) if scale is None else float(scale)
    block = _check_block_size(block_size)

    if tq * tk > block * block:
        out = np.empty((*scores_shape[:-1], v.shape[-1]), dtype=dtype)  # (..., Tq, dv)
        row_lse = np.empty((*scores_shape[:-1], 1), dtype=dtype)  # (..., Tq, 1)

        def forward_part(part: tuple) -> None:
            shape = (*out[part].shape[:-1], tk)  # this part's scores
            _blocked_forward(q[part], k[part], v[part], causal, mask, bias, scale, shape, block,
                             out[part], row_lse[part])  # fmt: skip

        _on_cores(forward_part, scores_shape, (q, k, v), mask, bias)
        cache: tuple = (q, k, v, row_lse, scale, bias, None, scores_shape, causal, mask, block)
        return out, cache
    table = _additive_mask(causal, mask, tq, tk, dtype)
    row_max = np.empty((*scores_shape[:-1], 1), dtype=dtype)  # (..., Tq, 1)
    out, row_sum = _unnormalised_attention(q, k, v, scale, bias, table, scores_shape, causal,
                                           row_max)  # fmt: skip
    empty = row_sum == 0  # fully masked rows (any other row sums to >= 1)
    # log-sum-exp per row for the backward; +inf for a fully masked row so exp(S - L) = 0 there
    with np.errstate(divide="ignore"):
        row_lse = np.log(row_sum)
    row_lse += row_max
    row_lse[empty] = np.inf
    row_sum[empty] = 1.0  # fully masked row: out = 0 / 1 = 0
    out /= row_sum

    # P itself is not kept (it is the largest activation of a transformer): the backward
    # rebuilds it from q, k and the row log-sum-exp, as FlashAttention's backward does.
    cache = (q, k, v, row_lse, scale, bias, table, scores_shape, causal, mask, None)
    return out, cache


def attention_backward(
    dout: np.ndarray, cache: tuple, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of out = softmax(S) V with S = scale * Q K^T + B (+ -inf where masked).

    Row by row, with g = dL/dout:

        out_i = sum_j P_ij V_j
            dL/dP_ij = g_i . V_j                 ->  dP = g V^T            (..., Tq, Tk)
            dL/dV_j  = sum_i P_ij g_i            ->  dV = P^T g            (..., Tk, dv)

        P_ij = exp(S_ij) / sum_l exp(S_il),  so  dP_ij/dS_il = P_ij (delta_jl - P_il):
            dL/dS_il = sum_j dP_ij P_ij (delta_jl - P_il)
                     = P_il (dP_il - sum_j dP_ij P_ij)
                                                 ->  dS = P * (dP - rowsum(dP * P))

        S_ij = scale * Q_i . K_j + B_ij:
            dL/dQ_i = scale * sum_j dS_ij K_j    ->  dQ = scale * dS K     (..., Tq, d)
            dL/dK_j = scale * sum_i dS_ij Q_i    ->  dK = scale * dS^T Q   (..., Tk, d)
            dL/dB   = dS, summed over the axes along which B was broadcast.

    The (Tk x Tk) Jacobian of each softmax row is never formed: dS costs one
    fused row sum (einsum) and two elementwise passes.

    P is rebuilt rather than stored: S is recomputed (one matmul, the mask and
    bias added again) and P_ij = exp(S_ij - L_i) with L_i = log sum_j exp(S_ij)
    from the forward, which equals exp(S_ij - m_i) / sum_j exp(S_ij - m_i) up
    to rounding. A fully masked row has L_i = +inf, so exp(-inf - inf) = 0.

    Masking needs no special case here. A masked S_ij is -inf, so P_ij is
    exactly 0, so dS_ij = P_ij * (...) is exactly 0: no gradient reaches Q_i or
    K_j through a masked pair, and V_j gets weight P_ij = 0 in dV. The mask
    itself is a constant. A fully masked row has P = 0 and an output that is
    the constant 0, so its zero gradients are the true ones.

    ``out``: the forward's output, when the caller still holds it. Then the row
    term is taken from it: rowsum(dP * P)_i = sum_j (g_i . V_j) P_ij = g_i . out_i,
    a (Tq x dv) contraction instead of a (Tq x Tk) one (equal up to rounding).

    Gradients of q, k, v are summed back to their own shapes if their leading
    axes were broadcast. Returns (dq, dk, dv, dbias), dbias None when no bias.

    A blocked forward gets a blocked backward (``_blocked_backward``): the same formulas,
    one (query block, key block) pair at a time.
    """
    if cache[-1] is not None:
        return _blocked_backward(np.asarray(dout), cache, out)
    q, k, v, row_lse, scale, bias, table, scores_shape, causal = cache[:9]
    *lead, tq, tk = scores_shape
    dtype = q.dtype
    dout = np.asarray(dout).astype(dtype, copy=False)
    chunks = causal_chunks(tq, tk, causal)
    dq = np.empty((*lead, tq, q.shape[-1]), dtype=dtype)
    dk = np.zeros((*lead, tk, k.shape[-1]), dtype=dtype)  # summed over the chunks
    dv = np.zeros((*lead, tk, v.shape[-1]), dtype=dtype)
    dbias = None if bias is None else np.zeros(bias.shape, dtype=dtype)
    for rows, keys in chunks:
        q_rows, g = q[..., rows, :], dout[..., rows, :]  # the chunk's queries and their dout
        k_keys, v_keys = k[..., keys, :], v[..., keys, :]  # the keys they see
        # P = exp(S - L), L the row log-sum-exp saved by the forward: one matmul and one exp
        probs = _masked_scores(q_rows, k_keys, scale, _piece(bias, rows, keys),
                               _piece(table, rows, keys),
                               _chunk_shape(scores_shape, rows, keys))  # fmt: skip
        probs -= row_lse[..., rows, :]
        np.exp(probs, out=probs)  # (..., rows, keys)
        dv[..., keys, :] += probs.swapaxes(-1, -2) @ g  # (..., keys, rows) @ (..., rows, dv)
        dscores = g @ v_keys.swapaxes(-1, -2)  # dP: (..., rows, dv) @ (..., dv, keys)
        if out is None:
            row_dot = np.einsum("...ij,...ij->...i", dscores, probs)[..., None]  # (..., rows, 1)
        else:
            row_dot = np.einsum("...ij,...ij->...i", g, out[..., rows, :])[..., None]
        np.subtract(dscores, row_dot, out=dscores)
        np.multiply(dscores, probs, out=dscores)  # dS = P * (dP - rowsum(dP * P)), in place
        del probs  # free a score-sized array before the two matmuls allocate their outputs
        np.matmul(dscores, k_keys, out=dq[..., rows, :])  # (..., rows, keys) @ (..., keys, d)
        dk[..., keys, :] += dscores.swapaxes(-1, -2) @ q_rows  # (..., keys, rows) @ (.., rows, d)
        if dbias is not None:
            target = _piece(dbias, rows, keys)
            target += _sum_to_shape(dscores, target.shape)
    if scale != 1.0:
        dq *= scale
        dk *= scale
    return _gradients_to_input_shapes(dq, dk, dv, dbias, q, k, v)


def _gradients_to_input_shapes(
    dq: np.ndarray,
    dk: np.ndarray,
    dv: np.ndarray,
    dbias: np.ndarray | None,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(dq, dk, dv, dbias), each of q, k, v's gradients summed over the axes its input was
    broadcast along (a key/value shared by heads, say)."""
    return _sum_to_shape(dq, q.shape), _sum_to_shape(dk, k.shape), _sum_to_shape(dv, v.shape), dbias


def attention_inference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    scale: float | None = None,
    block_size: int | None = None,
) -> np.ndarray:
    """``attention_forward``'s output alone, with no input checks, mask, bias or cache.

    For generation, where q, k, v come from the model itself (one dtype, matching shapes,
    Tq <= Tk so no query row is fully masked) and one token's attention is only a few
    microseconds of arithmetic: the checks and the backward's log-sum-exp would double it.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    block = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    if q.shape[-2] * k.shape[-2] > block * block:  # a long prompt: O(T) memory, as in training
        shape = (*np.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])
        out = np.empty((*shape[:-1], v.shape[-1]), dtype=q.dtype)  # (..., Tq, dv)
        row_lse = np.empty((*shape[:-1], 1), dtype=q.dtype)  # (..., Tq, 1), not kept

        def forward_part(part: tuple) -> None:
            part_shape = (*out[part].shape[:-1], shape[-1])
            _blocked_forward(q[part], k[part], v[part], causal, None, None, scale, part_shape,
                             block, out[part], row_lse[part])  # fmt: skip

        _on_cores(forward_part, shape, (q, k, v), None, None)
        return out
    tq, tk = q.shape[-2], k.shape[-2]
    table = _causal_additive_mask(tq, tk, q.dtype) if causal else None
    shape = (*np.broadcast_shapes(q.shape[:-2], k.shape[:-2]), tq, tk)
    out, row_sum = _unnormalised_attention(q, k, v, scale, None, table, shape,
                                           causal and tq > 1)  # fmt: skip
    out /= row_sum
    return out


def _unnormalised_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float,
    bias: np.ndarray | None,
    table: np.ndarray | None,
    scores_shape: tuple[int, ...],
    causal: bool,
    row_max: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(E V, rowsum(E)) with E = exp(S - rowmax(S)), S the masked scores of
    ``_masked_scores``, over the query rows in ``causal_chunks`` (each chunk's S made and
    exponentiated in place, one chunk at a time); the row maxima go into ``row_max``
    (..., Tq, 1) when given. out = E V / rowsum(E) is left to the caller: normalising after
    the matmul scales (Tq, dv), not E's (Tq, Tk).
    """
    *lead, tq, tk = scores_shape
    out = np.empty((*lead, tq, v.shape[-1]), dtype=q.dtype)  # (..., Tq, dv)
    row_sum = np.empty((*lead, tq, 1), dtype=q.dtype)
    for rows, keys in causal_chunks(tq, tk, causal):
        scores = _masked_scores(q[..., rows, :], k[..., keys, :], scale, _piece(bias, rows, keys),
                                _piece(table, rows, keys),
                                _chunk_shape(scores_shape, rows, keys))  # fmt: skip
        # Stable softmax in place. `initial` makes an empty key axis legal and is also much
        # faster than a plain max.
        shift = scores.max(axis=-1, keepdims=True, initial=-np.inf,
                           out=None if row_max is None else row_max[..., rows, :])  # fmt: skip
        shift[shift == -np.inf] = 0.0  # fully masked row: exp(-inf - 0) = 0, not exp(nan)
        np.subtract(scores, shift, out=scores)
        np.exp(scores, out=scores)
        np.einsum("...j->...", scores, out=row_sum[..., rows, 0])  # 4x a short-row .sum
        np.matmul(scores, v[..., keys, :], out=out[..., rows, :])  # E V, (rows, dv)
    return out, row_sum


def _masked_scores(
    q: np.ndarray,
    k: np.ndarray,
    scale: float,
    bias: np.ndarray | None,
    table: np.ndarray | None,
    scores_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """S = scale * q k^T + bias + mask table, a fresh (..., Tq, Tk) array, broadcast to
    ``scores_shape`` when given."""
    # Scaling q (Tq x d) is cheaper than scaling S (Tq x Tk) whenever d < Tk.
    q_scaled = q * scale if scale != 1.0 else q
    scores = q_scaled @ k.swapaxes(-1, -2)  # (..., Tq, d) @ (..., d, Tk) -> (..., Tq, Tk)
    if scores_shape is not None and scores.shape != scores_shape:  # mask or bias adds axes
        scores = np.broadcast_to(scores, scores_shape).copy()
    if bias is not None:
        scores += bias.astype(scores.dtype, copy=False)  # (..., Tq, Tk) += broadcast bias
    if table is not None:
        scores += table  # masked scores become -inf
    return scores


# ---- blocked attention --------------------------------------------------------------------


def _check_block_size(block_size: int | None) -> int:
    if block_size is None:
        return DEFAULT_BLOCK_SIZE
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"attention: block_size must be an integer or None, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"attention: block_size must be >= 1, got {block_size}")
    return int(block_size)


def _on_cores(
    run: Callable[[tuple], None],
    scores_shape: tuple[int, ...],
    qkv: tuple[np.ndarray, ...],
    mask: np.ndarray | None,
    bias: np.ndarray | None,
) -> None:
    """``run(part)`` for parts of the work that together cover it: index tuples that pick one
    entry of the scores' leading axes (one head of one row), taken in turn by one thread
    per BLAS thread, each on its own core with BLAS on one thread; ``run(...)`` alone when
    that is not possible.

    Why one head at a time: its blocks (a few hundred KiB) stay in the core's L2 cache
    between the matmul that writes them and the passes that read them, and its copies of
    K and V (``_augmented``) are O(T) for one head, not for all of them. Why threads: a
    block's matmuls are (block x d) by (d x block), too small for a BLAS that splits each
    one over its threads (each split pays a thread hand-off, and on a busy machine a
    waiting BLAS thread loses whole scheduler slices), and every element-wise pass over a
    block (exp, the rescaling) runs on one core. Independent heads on independent cores
    split all of it. The parts write into disjoint views, so the result is the same to the
    bit. Run whole: BLAS's thread count unknown; a bias (its gradient would be summed over
    the parts). Kept whole in each part: an axis along which q, k or v is broadcast (a key
    shared by a group of query heads) or the mask is not.
    """
    from numpyllm.nn.blas import current_threads
    from numpyllm.nn.parallel import on_cores

    lead = scores_shape[:-2]
    threads = current_threads()
    if not lead or bias is not None or any(a.ndim != len(scores_shape) for a in qkv) or (
        not threads
    ):
        return run((...,))
    axes = [
        i for i in range(len(lead))
        if all(a.shape[i] == lead[i] for a in qkv)
        and (mask is None or mask.ndim - len(scores_shape) + i < 0
             or mask.shape[mask.ndim - len(scores_shape) + i] == 1)
    ]  # fmt: skip
    whole = slice(None)
    parts = [
        tuple(slice(index[axes.index(i)], index[axes.index(i)] + 1) if i in axes else whole
              for i in range(len(lead)))
        for index in np.ndindex(*(lead[i] for i in axes))
    ]  # fmt: skip
    on_cores(run, parts)
    return None


@overload
def _piece(a: np.ndarray, rows: slice, cols: slice) -> np.ndarray: ...
@overload
def _piece(a: None, rows: slice, cols: slice) -> None: ...
def _piece(a: np.ndarray | None, rows: slice, cols: slice) -> np.ndarray | None:
    """The part of ``a`` (broadcastable to (..., Tq, Tk)) that falls on a (rows, cols) block;
    an axis of size 1 (broadcast) is kept whole. None for no array."""
    if a is None:
        return None
    whole = slice(None)
    return a[..., rows if a.shape[-2] != 1 else whole, cols if a.shape[-1] != 1 else whole]


def _key_blocks(
    rows: slice, tq: int, tk: int, block: int, causal: bool, dtype: np.dtype
) -> Iterator[tuple[slice, slice, np.ndarray | None]]:
    """The blocks the queries ``rows`` may attend to: (sub, cols, table) with ``sub`` the
    block's rows counted from rows.start, ``cols`` its keys, and its piece of the causal table
    (None where the causal rule blocks nothing in it).

    Causal, end-aligned: query i sees key j iff j <= i + off with off = Tk - Tq, so a key
    block that starts after the last query's last key is skipped (it is wholly in the
    future), and one that ends at or before the first query's last key needs no table. A key
    block the causal rule cuts through (on the diagonal) comes in chunks of its rows, each
    with only the keys up to its last row's last one (``causal_chunks``), so that its
    future is not computed either.
    """
    q0, q1 = rows.start, rows.stop
    off = tk - tq
    stop = min(tk, q1 + off) if causal else tk  # keys >= q1 + off are every query's future
    for k0 in range(0, max(stop, 0), block):
        k1 = min(k0 + block, tk)
        if not (causal and k1 - 1 > q0 + off):  # no pair of the block has j > i + off
            yield slice(0, q1 - q0), slice(k0, k1), None
            continue
        # the block's rows as queries of the keys k0 .. k1: row r sees up to key r + off - k0
        for sub, keys in causal_chunks(q1 - q0, k1 - k0, True, offset=q0 + off - k0):
            if keys.stop > 0:
                table = _band_table(sub.stop - sub.start, keys.stop, q0 + sub.start + off - k0,
                                    dtype)  # fmt: skip
                yield sub, slice(k0, k0 + keys.stop), table


def _scratch_block(
    scratch: dict[tuple[int, ...], np.ndarray], shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """An uninitialised (..., rows, cols) array of ``shape``, a view of one buffer kept in
    ``scratch`` for every block with those leading axes: a fresh block-sized array costs its
    page faults on every block, and the smaller chunks of a diagonal block fit in the
    buffer of a whole one (made larger if a block ever needs it).

    Its rows are padded to a length that is not a power of two: rows of 256 or 512 floats
    put a matmul's output columns in the same few cache sets (measured: the score matmul
    into such rows took 1.1-7x as long as into padded ones, varying with the addresses)."""
    *lead, rows, cols = shape
    buffer = scratch.get(tuple(lead))
    held_rows, held_cols = (0, 0) if buffer is None else (buffer.shape[-2], buffer.shape[-1] - 16)
    if buffer is None or rows > held_rows or cols > held_cols:
        padded = (max(rows, held_rows), max(cols, held_cols) + 16)  # +64 bytes a row
        buffer = scratch[tuple(lead)] = np.empty((*lead, *padded), dtype=dtype)
    return buffer[..., :rows, :cols]


def _block_scores(
    q_rows: np.ndarray,
    k: np.ndarray,
    rows: slice,
    cols: slice,
    mask: np.ndarray | None,
    bias: np.ndarray | None,
    table: np.ndarray | None,
    scratch: dict[tuple[int, ...], np.ndarray],
) -> np.ndarray:
    """S of one block: q_rows (already scaled; its leading axes those of the scores) against
    keys ``cols``, plus the bias, the boolean mask and the causal table's pieces; a
    (*lead, bq, bk) array from ``scratch``, overwritten by the next call with that dict."""
    scores = _scratch_block(scratch, (*q_rows.shape[:-1], cols.stop - cols.start), q_rows.dtype)
    np.matmul(q_rows, k[..., cols, :].swapaxes(-1, -2), out=scores)  # (..., bq, d) @ (..., d, bk)
    if bias is not None:
        scores += _piece(bias, rows, cols).astype(scores.dtype, copy=False)
    if mask is not None:
        allowed = _piece(mask, rows, cols)
        scores += np.where(allowed, scores.dtype.type(0), scores.dtype.type(-np.inf))
    if table is not None:
        scores += table  # causal: the future becomes -inf
    return scores


def _augmented(
    a: np.ndarray,
    column: float | np.ndarray,
    lead: tuple[int, ...] | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """[scale * a, column]: a copy of ``a`` (..., n, d) with one more feature, (..., n, d + 1),
    broadcast to the leading axes ``lead`` when given.

    Why: a matmul of two augmented arrays adds the product of the extra columns to every
    entry, [x, c] . [y, 1] = x . y + c, so a per-row shift (the running maximum, the
    log-sum-exp, the backward's row term) comes out of the matmul itself instead of costing
    one more pass over each (bq, bk) block.
    """
    shape = (*(a.shape[:-2] if lead is None else lead), a.shape[-2], a.shape[-1] + 1)
    out = np.empty(shape, dtype=a.dtype)
    if scale != 1.0:
        np.multiply(a, scale, out=out[..., :-1])
    else:
        out[..., :-1] = a
    out[..., -1:] = column
    return out


#: How far a row's scores may rise above the shift its exponentials are taken against
#: before the forward moves the shift: exp(S - m) <= e^8 ~ 3e3 then, far from float32's
#: overflow at e^88 even summed over 10^30 keys, and a block's maximum rarely rises that
#: much, so the block rarely needs a pass of its own to subtract a new maximum.
_LAZY_RESCALE = 8.0


def _blocked_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool,
    mask: np.ndarray | None,
    bias: np.ndarray | None,
    scale: float,
    scores_shape: tuple[int, ...],
    block: int,
    out: np.ndarray | None = None,
    row_lse: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Output (..., Tq, dv) and row log-sum-exp L (..., Tq, 1) by the online softmax of the
    module docstring, one (query block, key block) pair at a time; written into ``out`` and
    ``row_lse`` when given (views of a larger output, for one part of it).

    Two liberties with the textbook loop, both exact to rounding. The shift m that the
    exponentials are taken against comes out of the score matmul ([scale Q, -m] [K, 1]^T =
    S - m), and it is moved only when a row's scores rise more than ``_LAZY_RESCALE`` above
    it (or the row sees its first allowed key): any shift gives the same out = acc / l and
    L = m + log l, the true maximum only keeps exp from overflowing. And the row sums l come
    out of the value matmul: exp(S - m) [V, 1] = [acc, l].
    """
    *lead, tq, tk = scores_shape
    dtype = q.dtype
    dv = v.shape[-1]
    if out is None:
        out = np.empty((*lead, tq, dv), dtype=dtype)
    if row_lse is None:
        row_lse = np.empty((*lead, tq, 1), dtype=dtype)
    k_aug = _augmented(k, 1.0)  # (..., Tk, d + 1): [K, 1]
    v_aug = _augmented(v, 1.0)  # (..., Tk, dv + 1): [V, 1]
    scratch: dict[tuple[int, ...], np.ndarray] = {}
    for q0 in range(0, tq, block):
        rows = slice(q0, min(q0 + block, tq))
        n = rows.stop - q0
        q_aug = _augmented(q[..., rows, :], 0.0, tuple(lead), scale)  # [scale Q, -m]
        shift = q_aug[..., -1:]  # -m, (..., bq, 1); m = 0 until a row sees an allowed key
        seen = np.zeros((*lead, n, 1), dtype=bool)  # the row has met an allowed key
        acc = np.zeros((*lead, n, dv + 1), dtype=dtype)  # [sum exp(S - m) V, sum exp(S - m)]
        for sub, cols, table in _key_blocks(rows, tq, tk, block, causal, dtype):
            at = slice(q0 + sub.start, q0 + sub.stop)  # the rows of the block
            block_acc, block_seen = acc[..., sub, :], seen[..., sub, :]
            scores = _block_scores(q_aug[..., sub, :], k_aug, at, cols, mask, bias, table,
                                   scratch)  # S - m  # fmt: skip
            rise = scores.max(axis=-1, keepdims=True, initial=-np.inf)  # (..., rows, 1)
            move = (rise > _LAZY_RESCALE) | (~block_seen & (rise > -np.inf))
            if move.any():
                delta = np.where(move, rise, dtype.type(0))  # m_new - m
                scores -= delta
                # exp(m - m_new) <= 1 on a seen row; an unseen row's sums are still 0
                block_acc *= np.exp(np.where(block_seen, -delta, dtype.type(0)))
                shift[..., sub, :] -= delta
                block_seen |= move
            np.exp(scores, out=scores)  # a masked entry is exactly 0
            block_acc += scores @ v_aug[..., cols, :]  # (..., rows, keys) @ (..., keys, dv + 1)
        run_sum = acc[..., -1:]
        empty = run_sum == 0  # no allowed key in the row (any other row sums to >= 1)
        with np.errstate(divide="ignore"):
            lse = np.log(run_sum)
        lse -= shift  # L = m + log l
        lse[empty] = np.inf  # exp(S - inf) = 0 in the backward
        run_sum[empty] = 1.0  # out = 0 / 1 = 0
        np.divide(acc[..., :-1], run_sum, out=out[..., rows, :])
        row_lse[..., rows, :] = lse
    return out, row_lse


def _blocked_backward(
    dout: np.ndarray, cache: tuple, out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``attention_backward`` for a blocked forward, one (query block, key block) pair at a
    time: P_ij = exp(S_ij - L_i) is rebuilt from the stored log-sum-exp, and

        dV_j += P_ij^T g_i,   dS_ij = P_ij * (g_i V_j^T - rowdot_i),
        dQ_i += scale dS_ij K_j,   dK_j += scale dS_ij^T Q_i,   dB_ij = dS_ij

    with rowdot_i = g_i . out_i, which needs the whole row of P: it is taken from ``out``
    when given, else summed over the key blocks in a first pass (one more S per block).
    """
    q, k, v, row_lse, scale, bias, _, scores_shape, causal, mask, block = cache
    *lead, tq, tk = scores_shape
    dtype = q.dtype
    dout = dout.astype(dtype, copy=False)
    dq = np.zeros((*lead, tq, q.shape[-1]), dtype=dtype)
    dk = np.zeros((*lead, tk, k.shape[-1]), dtype=dtype)
    dv = np.zeros((*lead, tk, v.shape[-1]), dtype=dtype)
    dbias = None if bias is None else np.zeros(bias.shape, dtype=dtype)

    def backward_part(part: tuple) -> None:
        _blocked_backward_part(
            dout[part], q[part], k[part], v[part], row_lse[part],
            None if out is None else out[part], mask, bias, scale, causal, block,
            dq[part], dk[part], dv[part], dbias,
        )  # fmt: skip

    _on_cores(backward_part, scores_shape, (q, k, v), mask, bias)
    if scale != 1.0:
        dq *= scale
    return _gradients_to_input_shapes(dq, dk, dv, dbias, q, k, v)


def _blocked_backward_part(
    dout: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    row_lse: np.ndarray,
    out: np.ndarray | None,
    mask: np.ndarray | None,
    bias: np.ndarray | None,
    scale: float,
    causal: bool,
    block: int,
    dq: np.ndarray,
    dk: np.ndarray,
    dv: np.ndarray,
    dbias: np.ndarray | None,
) -> None:
    """``_blocked_backward``'s sums over the blocks, added into dq (unscaled), dk, dv and
    dbias, which hold the (broadcast) shapes of the scores' leading axes.

    Both row terms come out of the matmuls, as in the forward: [scale Q, -L] [K, 1]^T =
    S - L, whose exp is P, and [g, -rowdot] [V, 1]^T = dP - rowdot, which times P is dS.
    Each block then costs one exp and one multiply besides its five matmuls.
    """
    *lead, tq, _ = dq.shape
    tk = dk.shape[-2]
    dtype = dq.dtype
    k_aug = _augmented(k, 1.0)  # [K, 1]
    v_aug = _augmented(v, 1.0)  # [V, 1]
    p_scratch: dict[tuple[int, ...], np.ndarray] = {}  # P, one block
    ds_scratch: dict[tuple[int, ...], np.ndarray] = {}  # dS, one block
    if out is not None:
        row_dot = np.einsum("...ij,...ij->...i", dout, out)[..., None]  # (..., Tq, 1)
    else:
        row_dot = np.zeros((*lead, tq, 1), dtype=dtype)
    for q0 in range(0, tq, block):
        rows = slice(q0, min(q0 + block, tq))
        q_aug = _augmented(q[..., rows, :], -row_lse[..., rows, :], tuple(lead), scale)
        q_rows = q_aug[..., :-1]  # scale Q, (..., bq, d)
        g_aug = _augmented(dout[..., rows, :], 0.0, tuple(lead))  # [g, -rowdot], (..., bq, dv + 1)
        g = g_aug[..., :-1]
        blocks = list(_key_blocks(rows, tq, tk, block, causal, dtype))
        if out is None:  # rowdot_i = sum_j rowsum(dP_ij * P_ij), over every key block first
            for sub, cols, table in blocks:
                at = slice(q0 + sub.start, q0 + sub.stop)
                p = _block_scores(q_aug[..., sub, :], k_aug, at, cols, mask, bias, table,
                                  p_scratch)  # fmt: skip
                np.exp(p, out=p)
                dp = g[..., sub, :] @ v[..., cols, :].swapaxes(-1, -2)  # (.., rows, keys)
                row_dot[..., at, 0] += np.einsum("...ij,...ij->...i", dp, p)
        g_aug[..., -1:] = -row_dot[..., rows, :]
        for sub, cols, table in blocks:
            at = slice(q0 + sub.start, q0 + sub.stop)  # the rows of the block
            p = _block_scores(q_aug[..., sub, :], k_aug, at, cols, mask, bias, table,
                              p_scratch)  # S - L  # fmt: skip
            np.exp(p, out=p)  # P, (..., rows, keys)
            ds = _scratch_block(ds_scratch, p.shape, dtype)
            np.matmul(g_aug[..., sub, :], v_aug[..., cols, :].swapaxes(-1, -2), out=ds)
            # ds = dP - rowdot; the block's share of the sums, (keys, rows) @ (rows, dv) and on:
            dv[..., cols, :] += p.swapaxes(-1, -2) @ g[..., sub, :]
            ds *= p  # dS = P * (dP - rowdot), in place
            dq[..., at, :] += ds @ k[..., cols, :]  # (..., rows, keys) @ (..., keys, d)
            dk[..., cols, :] += ds.swapaxes(-1, -2) @ q_rows[..., sub, :]  # scale is in q_rows
            if dbias is not None:
                target = _piece(dbias, at, cols)
                target += _sum_to_shape(ds, target.shape)
