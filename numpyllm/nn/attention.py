"""The multi-head attention layer: four projections around scaled dot-product attention."""

from __future__ import annotations

import numpy as np

from numpyllm.functional.attention import attention_forward
from numpyllm.functional.linear import linear_forward
from numpyllm.functional.multi_head_attention import (
    merge_heads,
    multi_head_attention_backward,
    multi_head_attention_forward,
    present_kv,
    split_heads,
)
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
        self._cache: tuple[tuple, bool] | None = None

    def _weights(self) -> dict[str, np.ndarray | None]:
        weights: dict[str, np.ndarray | None] = {}
        for name in ("q", "k", "v", "o"):
            layer = getattr(self, f"{name}_proj")
            weights[f"{name}_weight"] = layer.weight.data
            weights[f"{name}_bias"] = None if layer.bias is None else layer.bias.data
        return weights

    def project_kv(self, x_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of x_kv, split into heads: each (B, H, Tk, head_dim)."""
        bias_k = None if self.k_proj.bias is None else self.k_proj.bias.data
        bias_v = None if self.v_proj.bias is None else self.v_proj.bias.data
        k, _ = linear_forward(x_kv, self.k_proj.weight.data, bias_k)  # (B, Tk, inner)
        v, _ = linear_forward(x_kv, self.v_proj.weight.data, bias_v)  # (B, Tk, inner)
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
        if kv is not None:
            self._cache = None
            out = self._attend_to_projected(x, kv, mask, bias)
            return (out, kv) if use_cache else out
        self_attention = x_kv is None
        out, cache = multi_head_attention_forward(
            x,
            x if x_kv is None else x_kv,
            self._weights(),
            self.n_head,
            causal=self.causal,
            mask=mask,
            bias=bias,
            scale=self.scale,
            past_kv=past_kv,
        )  # (B, Tq, d_model)
        self._cache = (cache, self_attention)
        return (out, present_kv(cache)) if use_cache else out

    def _attend_to_projected(self, x, kv, mask, bias) -> np.ndarray:
        bias_q = None if self.q_proj.bias is None else self.q_proj.bias.data
        bias_o = None if self.o_proj.bias is None else self.o_proj.bias.data
        q, _ = linear_forward(x, self.q_proj.weight.data, bias_q)  # (B, Tq, inner)
        attended, _ = attention_forward(
            split_heads(q, self.n_head), kv[0], kv[1],
            causal=self.causal, mask=mask, bias=bias, scale=self.scale,
        )  # fmt: skip  (B, H, Tq, head_dim)
        out, _ = linear_forward(merge_heads(attended), self.o_proj.weight.data, bias_o)
        return out  # (B, Tq, d_model)

    def backward(self, dout: np.ndarray):
        if self._cache is None:
            raise RuntimeError("MultiHeadAttention.backward called without a training forward")
        cache, self_attention = self._cache
        self._cache = None
        dx_q, dx_kv, grads = multi_head_attention_backward(dout, cache)
        for name in ("q", "k", "v", "o"):
            layer = getattr(self, f"{name}_proj")
            layer.weight.grad += grads[f"{name}_weight"]
            if layer.bias is not None:
                layer.bias.grad += grads[f"{name}_bias"]
        dbias = grads.get("bias")
        if self_attention:
            dx_q += dx_kv
            return dx_q, None, dbias
        return dx_q, dx_kv, dbias
