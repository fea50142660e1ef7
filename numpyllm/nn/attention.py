"""The multi-head attention layer: four projections around scaled dot-product attention."""

from __future__ import annotations

import numpy as np

from numpyllm.functional.attention import attention_backward, attention_forward
from numpyllm.functional.multi_head_attention import merge_heads, split_heads
from numpyllm.nn.linear import Linear
from numpyllm.nn.module import Module


class MultiHeadAttention(Module):
    """Self-, causal self- or cross-attention with ``n_head`` heads.

    Sub-layers ``q_proj``, ``k_proj``, ``v_proj`` (d_model -> inner) and ``o_proj``
    (inner -> d_model), weights stored (in, out). ``inner`` defaults to d_model;
    T5 sets it to n_head * d_kv and passes ``bias=False, scale=1.0``.

    ``forward(x, x_kv=None, mask=None, bias=None, past_kv=None, use_cache=False, kv=None)``:
      * x (B, Tq, d_model); x_kv (B, Tk, d_model) for cross-attention, None for self-attention;
      * mask: boolean broadcastable to (B, H, Tq, Tk), True = may attend (a padding mask
        (B, Tk) goes in as ``mask[:, None, None, :]``);
      * bias: added to the scores, broadcastable to (B, H, Tq, Tk) (T5's position bias);
      * past_kv / use_cache: generation's KV cache, (k, v) each (B, H, Tpast, head_dim);
        with ``use_cache`` the call returns ``(out, present_kv)``;
      * kv: keys and values already projected by ``project_kv`` (cross-attention during
        generation: the encoder's keys are computed once). Inference only.

    ``backward(dout) -> (dx, dx_kv, dbias)``: for self-attention dx carries both paths
    and dx_kv is None; dbias is None unless a bias was passed.

    The computation is ``numpyllm.functional.multi_head_attention``'s, step by step, with
    each projection made by its own ``Linear`` (``project`` forward, ``backward_from_input``
    backward, on the inputs kept here), so that any of them can be a LoRA linear or frozen.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        inner_dim: int | None = None,
        bias: bool = True,
        causal: bool = False,
        scale: float | None = None,
        rng: np.random.Generator | None = None,
        std: float = 0.02,
        out_std: float | None = None,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        inner = d_model if inner_dim is None else inner_dim
        if inner % n_head != 0:
            raise ValueError(f"attention inner size {inner} is not divisible by n_head={n_head}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.n_head = n_head
        self.causal = causal
        self.scale = scale
        self.q_proj = Linear(d_model, inner, bias=bias, rng=rng, std=std, dtype=dtype)
        self.k_proj = Linear(d_model, inner, bias=bias, rng=rng, std=std, dtype=dtype)
        self.v_proj = Linear(d_model, inner, bias=bias, rng=rng, std=std, dtype=dtype)
        out_std = std if out_std is None else out_std
        self.o_proj = Linear(inner, d_model, bias=bias, rng=rng, std=out_std, dtype=dtype)
        self._cache: tuple | None = None

    def project_kv(self, x_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of x_kv, split into heads: each (B, H, Tk, head_dim)."""
        k = self.k_proj.project(x_kv)  # (B, Tk, d_model) -> (B, Tk, inner)
        v = self.v_proj.project(x_kv)  # (B, Tk, d_model) -> (B, Tk, inner)
        return split_heads(k, self.n_head), split_heads(v, self.n_head)

    def forward(
        self,
        x: np.ndarray,
        x_kv: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        past_kv: tuple[np.ndarray, np.ndarray] | None = None,
        use_cache: bool = False,
        kv: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self._cache = None
        if kv is not None:
            out, _, _ = self._attend(x, kv, mask, bias, keep=False)
            return (out, kv) if use_cache else out
        x = np.asarray(x)
        self_attention = x_kv is None
        x_kv = x if self_attention else np.asarray(x_kv)
        k, v = self.project_kv(x_kv)  # each (B, H, Tk, dh)
        if past_kv is not None:
            k = np.concatenate([past_kv[0], k], axis=-2)  # (B, H, Tpast + Tk, dh)
            v = np.concatenate([past_kv[1], v], axis=-2)
        keep = past_kv is None and not use_cache  # a cached call is inference only
        out, attn_cache, merged = self._attend(x, (k, v), mask, bias, keep=keep)  # (B, Tq, d)
        if keep:
            self._cache = (x, x_kv, attn_cache, merged, self_attention)
        return (out, (k, v)) if use_cache else out

    def _attend(self, x, kv, mask, bias, keep: bool) -> tuple[np.ndarray, tuple, np.ndarray]:
        """Queries of x attend to the projected keys and values: out (B, Tq, d_model),
        attention's cache and its output with the heads merged (B, Tq, inner), o_proj's
        input. With ``keep``, o_proj keeps that input for the backward."""
        q = self.q_proj.project(x)  # (B, Tq, d_model) -> (B, Tq, inner)
        attended, attn_cache = attention_forward(
            split_heads(q, self.n_head), kv[0], kv[1],
            causal=self.causal, mask=mask, bias=bias, scale=self.scale,
        )  # fmt: skip  (B, H, Tq, head_dim)
        merged = merge_heads(attended)  # (B, H, Tq, dh) -> (B, Tq, inner)
        out = self.o_proj(merged) if keep else self.o_proj.project(merged)  # (B, Tq, d_model)
        return out, attn_cache, merged

    def backward(self, dout: np.ndarray):
        if self._cache is None:
            raise RuntimeError(
                "MultiHeadAttention.backward called without a training forward (a forward "
                "with past_kv, kv or use_cache is inference only)"
            )
        x, x_kv, attn_cache, merged, self_attention = self._cache
        self._cache = None
        # attention's output, as heads again (a view of what o_proj keeps anyway), gives the
        # backward its row term g . out without rebuilding P for it
        attended = split_heads(merged, self.n_head)  # (B, Tq, inner) -> (B, H, Tq, dh)
        dmerged = self.o_proj.backward(dout)  # (B, Tq, d_model) -> (B, Tq, inner)
        dq, dk, dv, dbias = attention_backward(
            split_heads(dmerged, self.n_head), attn_cache, out=attended
        )
        dx = self.q_proj.backward_from_input(merge_heads(dq), x)  # (B, Tq, d_model)
        dx_kv = self.k_proj.backward_from_input(merge_heads(dk), x_kv)  # (B, Tk, d_model)
        dx_kv += self.v_proj.backward_from_input(merge_heads(dv), x_kv)  # x_kv feeds K and V
        if self_attention:
            dx += dx_kv
            return dx, None, dbias
        return dx, dx_kv, dbias
