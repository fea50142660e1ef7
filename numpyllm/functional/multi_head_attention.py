"""Multi-head attention: project, split into heads, attend, merge heads, project back.

    Q = x_q W_q + b_q      (..., Tq, inner)     split ->  (..., H, Tq, dh)
    K = x_kv W_k + b_k     (..., Tk, inner)     split ->  (..., H, Tk, dh)
    V = x_kv W_v + b_v     (..., Tk, inner_v)   split ->  (..., H, Tk, dh_v)
    A = attention(Q, K, V) per head             (..., H, Tq, dh_v)   merge -> (..., Tq, inner_v)
    out = A W_o + b_o      (..., Tq, d_out)

Weights are stored (d_in, d_out) so that every projection is ``x @ W`` (the
GPT-2 checkpoint layout). Head h owns columns h*dh : (h+1)*dh of W_q, W_k,
W_v and rows h*dh_v : (h+1)*dh_v of W_o, the layout every common checkpoint
uses. The inner size (q_weight.shape[1]) need not equal d_model (T5 has
n_heads * d_kv != d_model in some sizes); dh = inner / n_head.

Self-attention passes the same array as x_q and x_kv and adds the two input
gradients the backward returns; cross-attention (T5's decoder) passes the
encoder output as x_kv. A GPT block that wants one fused (d, 3d) projection
does it itself and calls ``attention_forward`` on ``split_heads`` views.

KV cache (generation, inference only): ``past_kv=(k_past, v_past)``, each
(..., H, Tpast, dh), holds the keys and values already projected at earlier
steps; the new ones are appended after them, so attention runs over
Tk_total = Tpast + Tk keys (with ``causal=True`` the queries are aligned to
the end of the keys, which is exactly what the new tokens need). The keys and
values of this call, past included, are read back from the cache with
``present_kv(cache)`` and passed as ``past_kv`` to the next step::

    out, cache = multi_head_attention_forward(x, x, w, n_head, causal=True, past_kv=past)
    past = present_kv(cache)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from numpyllm.functional.attention import attention_backward, attention_forward
from numpyllm.functional.linear import linear_backward, linear_forward

_PROJECTIONS = ("q", "k", "v", "o")


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """(..., T, H * dh) -> (..., H, T, dh); head h takes features h*dh : (h+1)*dh. A view."""
    if n_head < 1 or x.shape[-1] % n_head != 0:
        raise ValueError(
            f"split_heads: the last dimension {x.shape[-1]} of shape {x.shape} is not divisible "
            f"by n_head={n_head}"
        )
    *lead, t, inner = x.shape
    return x.reshape(*lead, t, n_head, inner // n_head).swapaxes(-2, -3)  # (..., H, T, dh)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(..., H, T, dh) -> (..., T, H * dh), the inverse of ``split_heads`` (copies once)."""
    *lead, h, t, dh = x.shape
    return x.swapaxes(-2, -3).reshape(*lead, t, h * dh)  # (..., T, H, dh) -> (..., T, H*dh)


def present_kv(cache: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The keys and values attended to in the call that made ``cache``, past ones included.

    Each (..., H, Tk_total, dh), already projected and split into heads: pass
    them as ``past_kv`` to the next generation step.
    """
    attn_cache = cache[3]
    return attn_cache[1], attn_cache[2]


def _check_weights(
    weights: Mapping[str, np.ndarray | None],
    x_q: np.ndarray,
    x_kv: np.ndarray,
    n_head: int,
) -> dict[str, np.ndarray]:
    """The four projection matrices, "q_weight" ... "o_weight", once they are checked."""
    if not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"multi_head_attention: n_head must be a positive integer, got {n_head!r}")
    matrices: dict[str, np.ndarray] = {}
    for p in _PROJECTIONS:
        w = weights.get(f"{p}_weight")
        if w is None:
            raise ValueError(f"multi_head_attention: weights has no '{p}_weight'")
        matrices[f"{p}_weight"] = w
        if w.ndim != 2:
            raise ValueError(f"multi_head_attention: {p}_weight must be 2-D, got shape {w.shape}")
        b = weights.get(f"{p}_bias")
        if b is not None and b.shape != (w.shape[1],):
            raise ValueError(
                f"multi_head_attention: {p}_bias must have shape ({w.shape[1]},) to match "
                f"{p}_weight {w.shape}, got {b.shape}"
            )
    w_q, w_k, w_v, w_o = (matrices[f"{p}_weight"] for p in _PROJECTIONS)
    expected_in = {"q": x_q.shape[-1], "k": x_kv.shape[-1], "v": x_kv.shape[-1], "o": w_v.shape[1]}
    for p, d_in in expected_in.items():
        w = matrices[f"{p}_weight"]
        if w.shape[0] != d_in:
            source = {"q": "x_q's last dimension", "o": "v_weight's output size"}.get(
                p, "x_kv's last dimension"
            )
            raise ValueError(
                f"multi_head_attention: {p}_weight {w.shape} expects input size {w.shape[0]} but "
                f"{source} is {d_in}"
            )
    if w_q.shape[1] != w_k.shape[1]:
        raise ValueError(
            f"multi_head_attention: q_weight {w_q.shape} and k_weight {w_k.shape} must have the "
            "same output (inner) size"
        )
    for name, inner in (("q_weight/k_weight", w_q.shape[1]), ("v_weight", w_v.shape[1])):
        if inner % n_head != 0:
            raise ValueError(
                f"multi_head_attention: inner size {inner} of {name} is not divisible by "
                f"n_head={n_head}"
            )
    names = [f"{p}_{kind}" for p in _PROJECTIONS for kind in ("weight", "bias")]
    arrays = {"x_q": x_q, "x_kv": x_kv}
    arrays.update({name: a for name in names if (a := weights.get(name)) is not None})
    for name, a in arrays.items():
        if a.dtype != x_q.dtype:
            raise TypeError(
                f"multi_head_attention: {name} has dtype {a.dtype} but x_q has {x_q.dtype}; "
                "every array must share one dtype (no silent casts)"
            )
    return matrices


def multi_head_attention_forward(
    x_q: np.ndarray,
    x_kv: np.ndarray,
    weights: Mapping[str, np.ndarray | None],
    n_head: int,
    causal: bool = False,
    mask: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    scale: float | None = None,
    past_kv: tuple[np.ndarray, np.ndarray] | None = None,
    key_padding_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple]:
    """Multi-head attention of the queries x_q over the keys/values x_kv.

    Shapes: x_q (..., Tq, d_q), x_kv (..., Tk, d_kv) -> out (..., Tq, d_out).
    weights: "q_weight" (d_q, inner), "k_weight" (d_kv, inner), "v_weight" (d_kv, inner_v),
             "o_weight" (inner_v, d_out); optional "q_bias", "k_bias", "v_bias", "o_bias"
             (absent or None = no bias, as in T5). All arrays share x_q's dtype.
    Below, Tk counts the past keys too when past_kv is given.
    mask:    boolean, broadcastable to (..., H, Tq, Tk); True = may attend. A per-key padding
             mask (B, Tk) goes in either here, reshaped to (B, 1, 1, Tk), or as
             ``key_padding_mask``.
    key_padding_mask: boolean (..., Tk), True = a real token, False = padding never attended to.
    bias:    float added to the scores, broadcastable to (..., H, Tq, Tk) (T5 position bias).
    scale:   default 1 / sqrt(dh); T5 passes 1.0.
    past_kv: (k_past, v_past), (..., H, Tpast, dh) and (..., H, Tpast, dh_v), from
             ``present_kv`` of the previous step; see the module docstring. Inference only:
             the backward refuses such a cache.
    """
    x_q, x_kv = np.asarray(x_q), np.asarray(x_kv)
    w = _check_weights(weights, x_q, x_kv, n_head)
    q, q_cache = linear_forward(x_q, w["q_weight"], weights.get("q_bias"))  # -> (..., Tq, inner)
    k, k_cache = linear_forward(x_kv, w["k_weight"], weights.get("k_bias"))  # -> (..., Tk, inner)
    v, v_cache = linear_forward(x_kv, w["v_weight"], weights.get("v_bias"))  # -> (..., Tk, inner_v)
    q_heads = split_heads(q, n_head)  # (..., Tq, inner) -> (..., H, Tq, dh)
    k_heads = split_heads(k, n_head)  # (..., Tk, inner) -> (..., H, Tk, dh)
    v_heads = split_heads(v, n_head)  # (..., Tk, inner_v) -> (..., H, Tk, dh_v)

    if past_kv is not None:
        k_past, v_past = (np.asarray(a) for a in past_kv)
        for name, past, new in (("k_past", k_past, k_heads), ("v_past", v_past, v_heads)):
            if past.shape[:-2] != new.shape[:-2] or past.shape[-1] != new.shape[-1]:
                raise ValueError(
                    f"multi_head_attention: {name} must have shape (..., H, Tpast, dh) = "
                    f"{(*new.shape[:-2], 'Tpast', new.shape[-1])}, got {past.shape}"
                )
            if past.dtype != new.dtype:
                raise TypeError(
                    f"multi_head_attention: {name} has dtype {past.dtype}, expected {new.dtype}"
                )
        if k_past.shape[-2] != v_past.shape[-2]:
            raise ValueError(
                f"multi_head_attention: k_past {k_past.shape} and v_past {v_past.shape} hold "
                "different numbers of positions"
            )
        k_heads = np.concatenate([k_past, k_heads], axis=-2)  # (..., H, Tpast + Tk, dh)
        v_heads = np.concatenate([v_past, v_heads], axis=-2)  # (..., H, Tpast + Tk, dh_v)

    if key_padding_mask is not None:
        key_padding_mask = np.asarray(key_padding_mask)
        tk = k_heads.shape[-2]
        if key_padding_mask.dtype != np.bool_ or key_padding_mask.shape[-1:] != (tk,):
            raise ValueError(
                f"multi_head_attention: key_padding_mask must be boolean of shape (..., Tk) with "
                f"Tk={tk}, got {key_padding_mask.dtype} {key_padding_mask.shape}"
            )
        padding = key_padding_mask[..., None, None, :]  # (..., Tk) -> (..., 1, 1, Tk)
        mask = padding if mask is None else np.asarray(mask) & padding

    attended, attn_cache = attention_forward(
        q_heads, k_heads, v_heads, causal=causal, mask=mask, bias=bias, scale=scale
    )  # (..., H, Tq, dh_v)
    merged = merge_heads(attended)  # (..., H, Tq, dh_v) -> (..., Tq, inner_v)
    out, o_cache = linear_forward(merged, w["o_weight"], weights.get("o_bias"))  # (..., Tq, d_out)
    cache = (q_cache, k_cache, v_cache, attn_cache, o_cache, n_head, past_kv is not None)
    return out, cache


def multi_head_attention_backward(
    dout: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Gradients by running the forward's steps backwards, each with its own backward.

    The output projection, the head split/merge (a permutation of entries, so
    its backward is the inverse permutation), attention and the three input
    projections each have their derivation in their own module. x_kv feeds both
    K and V, so dx_kv = dK W_k^T + dV W_v^T.

    Returns (dx_q, dx_kv, dweights). dweights has one entry per weight passed
    ("q_weight", ..., and each bias that was not None) and, only when the
    forward was given an additive ``bias``, an entry "bias": its gradient,
    summed to the bias' shape (T5 trains its relative position bias with it).
    """
    q_cache, k_cache, v_cache, attn_cache, o_cache, n_head, has_past = cache
    if has_past:
        raise ValueError(
            "multi_head_attention_backward: the forward was called with past_kv, which is "
            "for inference only; run the whole sequence without past_kv to train"
        )
    dmerged, dw_o, db_o = linear_backward(dout, o_cache)  # (..., Tq, d_out) -> (..., Tq, inner_v)
    dattended = split_heads(dmerged, n_head)  # (..., Tq, inner_v) -> (..., H, Tq, dh_v)
    # o_proj's input is attention's output with its heads merged: as heads again (a view) it
    # gives the backward its row term g . out without rebuilding P for it
    attended = split_heads(o_cache[0], n_head)  # (..., Tq, inner_v) -> (..., H, Tq, dh_v)
    dq_heads, dk_heads, dv_heads, dbias = attention_backward(dattended, attn_cache, out=attended)
    dq = merge_heads(dq_heads)  # (..., H, Tq, dh) -> (..., Tq, inner)
    dk = merge_heads(dk_heads)  # (..., H, Tk, dh) -> (..., Tk, inner)
    dv = merge_heads(dv_heads)  # (..., H, Tk, dh_v) -> (..., Tk, inner_v)
    dx_q, dw_q, db_q = linear_backward(dq, q_cache)  # -> (..., Tq, d_q)
    dx_k, dw_k, db_k = linear_backward(dk, k_cache)  # -> (..., Tk, d_kv)
    dx_v, dw_v, db_v = linear_backward(dv, v_cache)  # -> (..., Tk, d_kv)
    dx_k += dx_v  # x_kv feeds both K and V
    grads = {
        "q_weight": dw_q, "q_bias": db_q,
        "k_weight": dw_k, "k_bias": db_k,
        "v_weight": dw_v, "v_bias": db_v,
        "o_weight": dw_o, "o_bias": db_o,
        "bias": dbias,
    }  # fmt: skip
    dweights = {name: g for name, g in grads.items() if g is not None}
    return dx_q, dx_k, dweights
