"""Grouped-query attention (GQA): H query heads sharing H_kv key/value heads.

Multi-head attention gives every query head its own keys and values. GQA keeps H query heads
but only H_kv key/value heads (H_kv divides H), each shared by a group of G = H / H_kv
consecutive query heads: query head h reads key/value head h // G. Multi-query attention
(H_kv = 1) and ordinary multi-head attention (H_kv = H) are the two ends. The point is the
KV cache of generation, which holds H_kv heads instead of H: G times smaller.

    out_h = softmax(scale · Q_h K_{h//G}^T + mask) V_{h//G}             h = 0 .. H - 1

Forward without copying the shared heads. Instead of repeating each key/value head G times
(transformers' ``repeat_kv``), the G query heads of a group are stacked along the query
axis: Q (..., H, Tq, d) is viewed as (..., H_kv, G·Tq, d), row g·Tq + i being query i of
the group's head g. Each key/value head then meets all the queries that read it in one
matrix product, (G·Tq, d) @ (d, Tk), and the ordinary attention op runs on these shapes.
Rows are independent in attention, so the stacking changes nothing but the shapes: the
causal rule is applied per row with query i's position, the mask of head g goes to rows
g·Tq .. g·Tq + Tq - 1.

Backward: the gradient of a shared head. K_j of group kv enters the scores of every query
row of every head of the group, S_{(g,i), j} = scale Q_{g,i} · K_j, so

    dL/dK_j = scale Σ_g Σ_i dS_{(g,i), j} Q_{g,i}         ->  dK = scale dS^T Q

over the stacked (G·Tq) rows: the sum over the group's heads is the matmul's own
contraction, and likewise dV = P^T dout sums each head's share into the shared value head.
dQ is per head, as in multi-head attention. (Repeating K and V and summing the repeated
copies' gradients afterwards gives the same numbers with G times more memory.)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from numpyllm.functional.attention import (
    attention_backward,
    attention_forward,
    attention_inference,
)


def _check(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> int:
    """The group size G = H / H_kv, after checking the head axes."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < 3:
            raise ValueError(
                f"grouped_query_attention: {name} must have shape (..., heads, T, d), "
                f"got {a.shape}"
            )
    if k.shape[:-2] != v.shape[:-2] or q.shape[:-3] != k.shape[:-3]:
        raise ValueError(
            "grouped_query_attention: q (..., H, Tq, d), k and v (..., H_kv, Tk, d) must share "
            f"their leading axes, got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    heads, kv_heads = q.shape[-3], k.shape[-3]
    if heads % kv_heads:
        raise ValueError(
            f"grouped_query_attention: the {heads} query heads must be a multiple of the "
            f"{kv_heads} key/value heads"
        )
    return heads // kv_heads


@lru_cache(maxsize=32)
def _grouped_causal(groups: int, tq: int, tk: int) -> np.ndarray:
    """(G·Tq, Tk) boolean, True = may attend: row g·Tq + i sees keys j <= i + Tk - Tq
    (end-aligned, as in ``numpyllm.functional.attention``). Read-only, shared."""
    allowed = np.tril(np.ones((tq, tk), dtype=bool), k=tk - tq)  # (Tq, Tk)
    table = np.tile(allowed, (groups, 1))  # (G·Tq, Tk)
    table.flags.writeable = False
    return table


def _grouped_mask(
    mask: np.ndarray | None, causal: bool, lead: tuple[int, ...], heads: int, groups: int,
    tq: int, tk: int,
) -> np.ndarray | None:  # fmt: skip
    """The boolean mask for the stacked shapes (..., H_kv, G·Tq, Tk), or None.

    A mask shared by every head and query, (..., 1, 1, Tk) such as padding, is used as it
    is; any other is broadcast to (..., H, Tq, Tk) first and then regrouped.
    """
    grouped = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"grouped_query_attention: mask must be boolean, got {mask.dtype}")
        try:
            full = np.broadcast_shapes(mask.shape, (*lead, heads, tq, tk))
        except ValueError:
            full = None
        if full != (*lead, heads, tq, tk):
            raise ValueError(
                f"grouped_query_attention: mask of shape {mask.shape} does not broadcast to "
                f"(..., H, Tq, Tk) = {(*lead, heads, tq, tk)}"
            )
        if mask.ndim >= 3 and mask.shape[-3] == 1 and mask.shape[-2] == 1:
            grouped = mask  # the same row of keys for every head and query
        else:
            grouped = np.broadcast_to(mask, full).reshape(*lead, heads // groups, groups * tq, tk)
    if causal and tq > 1:
        table = _grouped_causal(groups, tq, tk)
        grouped = table if grouped is None else grouped & table
    elif causal and tk < tq:  # a single query with no key: nothing to see
        grouped = np.zeros((1, tk), dtype=bool) if grouped is None else grouped & False
    return grouped


def grouped_query_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    mask: np.ndarray | None = None,
    scale: float | None = None,
) -> tuple[np.ndarray, tuple]:
    """out_h = softmax(scale q_h k_{h//G}^T, masked) v_{h//G} for every query head h.

    Shapes: q (..., H, Tq, d), k (..., H_kv, Tk, d), v (..., H_kv, Tk, dv) with H_kv | H
    -> out (..., H, Tq, dv). ``causal`` is end-aligned (query i sees keys j <= i + Tk - Tq,
    for a KV cache); ``mask`` is boolean, broadcastable to (..., H, Tq, Tk), True = may
    attend; ``scale`` defaults to 1 / sqrt(d). The work is ``attention_forward`` on q viewed
    as (..., H_kv, G·Tq, d) (see the module docstring).
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    groups = _check(q, k, v)
    *lead, heads, tq, d = q.shape
    tk = k.shape[-2]
    stacked = q.reshape(*lead, heads // groups, groups * tq, d)  # a view when q is C-ordered
    table = _grouped_mask(mask, causal, tuple(lead), heads, groups, tq, tk)
    out, cache = attention_forward(stacked, k, v, mask=table, scale=scale)  # (.., Hkv, G·Tq, dv)
    return out.reshape(*lead, heads, tq, v.shape[-1]), (cache, q.shape)


def grouped_query_attention_backward(
    dout: np.ndarray, cache: tuple, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) of ``grouped_query_attention_forward``; dk and dv hold each group's
    summed gradient (see the module docstring). ``out``: the forward's output, if kept (it
    spares the backward one (Tq, Tk) contraction)."""
    attention_cache, q_shape = cache
    stacked_q = attention_cache[0]
    dout = np.asarray(dout).reshape(stacked_q.shape[:-1] + (-1,))  # (..., Hkv, G·Tq, dv)
    if out is not None:
        out = out.reshape(dout.shape)
    dq, dk, dv, _ = attention_backward(dout, attention_cache, out=out)
    return dq.reshape(q_shape), dk, dv


def grouped_query_attention_inference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False
) -> np.ndarray:
    """The forward's output alone, for generation: q (B, H, Tq, d) from the model itself,
    k and v (B, H_kv, Tk, d) with Tk >= Tq. A single query sees every key, so a generation
    step runs ``attention_inference`` on the stacked heads with no mask at all."""
    *lead, heads, tq, d = q.shape
    kv_heads = k.shape[-3]
    stacked = q.reshape(*lead, kv_heads, heads // kv_heads * tq, d)  # (..., Hkv, G·Tq, d)
    if causal and tq > 1:
        out, _ = grouped_query_attention_forward(q, k, v, causal=True)
        return out
    return attention_inference(stacked, k, v).reshape(*lead, heads, tq, v.shape[-1])
