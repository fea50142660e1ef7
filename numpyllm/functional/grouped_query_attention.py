"""Grouped-query attention (GQA): H query heads sharing H_kv key/value heads.

Multi-head attention gives every query head its own keys and values. GQA keeps H query heads
but only H_kv key/value heads (H_kv divides H), each shared by a group of G = H / H_kv
consecutive query heads: query head h reads key/value head h // G. Multi-query attention
(H_kv = 1) and ordinary multi-head attention (H_kv = H) are the two ends. The point is the
KV cache of generation, which holds H_kv heads instead of H: G times smaller.

    out_h = softmax(scale · Q_h K_{h//G}^T + mask) V_{h//G}             h = 0 .. H - 1

Forward without copying the shared heads. Instead of repeating each key/value head G times
(transformers' ``repeat_kv``), the heads get a group axis: Q (..., H, Tq, d) is viewed as
(..., H_kv, G, Tq, d), query head h = kv·G + g at [kv, g], and K, V (..., H_kv, Tk, d) as
(..., H_kv, 1, Tk, d), a key/value head broadcast over its group. The ordinary attention op
runs on these shapes, with its own causal rule (each head's queries are still its Tq rows,
so causal attention skips the key blocks in a query block's future, as for any head).

Backward: the gradient of a shared head. K_j of group kv enters the scores of every query
row of every head of the group, S_{g,i,j} = scale Q_{g,i} · K_j, so

    dL/dK_j = scale Σ_g Σ_i dS_{g,i,j} Q_{g,i}        ->  dK = scale Σ_g dS_g^T Q_g

the sum over the group axis along which K was broadcast (attention's backward sums a
gradient back to its input's shape), and likewise dV = Σ_g P_g^T dout_g sums each head's
share into the shared value head. dQ is per head, as in multi-head attention. (Repeating K
and V, as ``repeat_kv`` does, gives the same numbers with G times their memory.)

A generation step (one query) stacks the group's heads along the query axis instead,
(..., H_kv, G·Tq, d): G query rows meet their shared keys in one matrix product rather than
G matrix-vector products (``grouped_query_attention_inference``).
"""

from __future__ import annotations

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


def _grouped_mask(
    mask: np.ndarray | None, lead: tuple[int, ...], heads: int, groups: int, tq: int, tk: int
) -> np.ndarray | None:
    """The boolean mask for the grouped shapes (..., H_kv, G, Tq, Tk), or None.

    A mask with one head axis for every head, (..., 1, Tq | 1, Tk) such as padding, gets a
    group axis of size 1; a per-head one (..., H, Tq, Tk) has its head axis cut into
    (H_kv, G), the order in which the heads are grouped.
    """
    if mask is None:
        return None
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
    if mask.ndim < 3:  # no head axis: broadcasts as it is
        return mask
    *rest, mask_heads, rows, cols = mask.shape
    split = (1, 1) if mask_heads == 1 else (heads // groups, groups)
    return mask.reshape(*rest, *split, rows, cols)


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
    as (..., H_kv, G, Tq, d) and k, v as (..., H_kv, 1, Tk, d) (see the module docstring).
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    groups = _check(q, k, v)
    *lead, heads, tq, d = q.shape
    tk = k.shape[-2]
    grouped = q.reshape(*lead, heads // groups, groups, tq, d)  # a view when q is C-ordered
    table = _grouped_mask(mask, tuple(lead), heads, groups, tq, tk)
    out, cache = attention_forward(
        grouped, k[..., None, :, :], v[..., None, :, :], causal=causal, mask=table, scale=scale
    )  # (..., Hkv, G, Tq, dv); k and v are (..., Hkv, 1, Tk, d) views
    return out.reshape(*lead, heads, tq, v.shape[-1]), (cache, q.shape)


def grouped_query_attention_backward(
    dout: np.ndarray, cache: tuple, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) of ``grouped_query_attention_forward``; dk and dv hold each group's
    summed gradient (see the module docstring). ``out``: the forward's output, if kept (it
    spares the backward one (Tq, Tk) contraction)."""
    attention_cache, q_shape = cache
    grouped_q = attention_cache[0]  # (..., Hkv, G, Tq, d)
    dout = np.asarray(dout).reshape(grouped_q.shape[:-1] + (-1,))  # (..., Hkv, G, Tq, dv)
    if out is not None:
        out = out.reshape(dout.shape)
    dq, dk, dv, _ = attention_backward(dout, attention_cache, out=out)  # dk, dv summed over G
    return dq.reshape(q_shape), dk[..., 0, :, :], dv[..., 0, :, :]


def grouped_query_attention_inference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False
) -> np.ndarray:
    """The forward's output alone, for generation: q (B, H, Tq, d) from the model itself,
    k and v (B, H_kv, Tk, d) with Tk >= Tq. A single query sees every key, so a generation
    step runs ``attention_inference`` on the group's heads stacked along the query axis,
    with no mask at all; a prompt runs it on the forward's grouped shapes, causal."""
    *lead, heads, tq, d = q.shape
    kv_heads = k.shape[-3]
    if causal and tq > 1:
        grouped = q.reshape(*lead, kv_heads, heads // kv_heads, tq, d)  # (..., Hkv, G, Tq, d)
        out = attention_inference(grouped, k[..., None, :, :], v[..., None, :, :], causal=True)
    else:
        stacked = q.reshape(*lead, kv_heads, heads // kv_heads * tq, d)  # (..., Hkv, G·Tq, d)
        out = attention_inference(stacked, k, v)
    return out.reshape(*lead, heads, tq, v.shape[-1])
