"""Incremental decoding for Llama: the forward that generation runs, one step at a time.

The scaffolding (preallocated key/value buffers, checks, the step loop) is
``numpyllm.models.decoding``'s, shared with GPT's decoder; here is Llama's maths for one
step. What differs from GPT:

- the buffers hold H_kv heads, (B, H_kv, max_len, dh): with grouped-query attention the
  cache is G = H / H_kv times smaller than a multi-head model's of the same width (see
  docs/llama.md for the numbers), and the G query heads of a group read their shared head
  in one matrix product (``grouped_query_attention_inference``);
- keys are stored already rotated: RoPE turns a key by its own position, which does not
  change afterwards, so a cached key never needs touching again and only the new tokens'
  queries and keys are rotated, by positions P .. P + T - 1.

    with model.incremental_decoder(batch=1) as decoder:
        logits = decoder.step(prompt_ids)          # (B, T) -> (B, V), the last position's
        logits = decoder.step(next_ids[:, None])   # (B, 1) -> (B, V), positions continue

Logits agree with ``Llama.forward``'s to rounding (the tests check both dtypes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from numpyllm.functional.grouped_query_attention import grouped_query_attention_inference
from numpyllm.functional.rope import rope_forward
from numpyllm.functional.swiglu import swiglu_inference
from numpyllm.models.decoding import IncrementalDecoder

if TYPE_CHECKING:
    from numpyllm.models.llama import Llama
    from numpyllm.nn.norms import RMSNorm


class LlamaDecoder(IncrementalDecoder):
    """A Llama's forward for generation, with a preallocated key-value cache of H_kv heads
    (see ``numpyllm.models.decoding.IncrementalDecoder``): ``batch`` rows, at most
    ``max_len`` tokens in all (default: the model's context, or its sliding window if
    shorter)."""

    model: Llama

    def __init__(self, model: Llama, batch: int = 1, max_len: int | None = None) -> None:
        config = model.config
        limit = config.max_seq_len
        if config.sliding_window is not None:  # beyond it, attention would be windowed
            limit = min(limit, config.sliding_window)
        assert config.n_kv_head is not None, "LlamaConfig.__post_init__ sets n_kv_head"
        n_kv_head = config.n_kv_head
        super().__init__(
            model, batch, max_len, limit=limit,
            limit_text=f"{limit} (max_seq_len={config.max_seq_len}, "
                       f"sliding_window={config.sliding_window})",
            n_layer=config.n_layer, kv_heads=n_kv_head, head_dim=config.head_dim,
        )  # fmt: skip

    def _largest_weight(self) -> int:
        return max(p.data.size for p in self.model.parameters())

    def _embed(self, ids: np.ndarray, P: int) -> np.ndarray:
        return self.model.model.embed_tokens.weight.data[ids]  # (B, T, d), a fresh gather

    def _logits(self, last: np.ndarray) -> np.ndarray:
        model = self.model
        last = _norm(model.model.norm, last)  # (B, d)
        if model.lm_head is None:
            return last @ model.model.embed_tokens.weight.data.T  # (B, d) @ (d, V), tied
        return model.lm_head.project(last)  # (B, V)

    def _layer(self, index: int, x: np.ndarray, P: int) -> np.ndarray:
        """a = x + attn(norm_1(x)), y = a + mlp(norm_2(a)), as the layer computes them in
        its forward, with this layer's cache."""
        layer = self.model.model.layers[index]
        B, T, _ = x.shape
        rope = self.model.rope(P, T)  # (cos, sin) of positions P .. P + T - 1
        attn = layer.self_attn
        H, Hkv, dh = attn.n_head, attn.n_kv_head, attn.head_dim
        h = _norm(layer.input_layernorm, x)  # (B, T, d)
        q = attn.q_proj.project(h).reshape(B, T, H, dh).transpose(0, 2, 1, 3)  # (B, H, T, dh)
        k = attn.k_proj.project(h).reshape(B, T, Hkv, dh).transpose(0, 2, 1, 3)
        v = attn.v_proj.project(h).reshape(B, T, Hkv, dh).transpose(0, 2, 1, 3)
        q, _ = rope_forward(q, *rope)
        keys, values = self.keys[index], self.values[index]
        keys[:, :, P : P + T], _ = rope_forward(k, *rope)  # stored rotated
        values[:, :, P : P + T] = v
        heads = grouped_query_attention_inference(
            q, keys[:, :, : P + T], values[:, :, : P + T], causal=True
        )  # (B, H, T, dh)
        x += attn.o_proj.project(heads.transpose(0, 2, 1, 3).reshape(B, T, H * dh))
        mlp = layer.mlp
        h = _norm(layer.post_attention_layernorm, x)
        hidden = swiglu_inference(mlp.gate_proj.project(h), mlp.up_proj.project(h))
        x += mlp.down_proj.project(hidden)
        return x


def _norm(norm: RMSNorm, x: np.ndarray) -> np.ndarray:
    """x / sqrt(mean(x²) + ε) · w over the last axis, with no cache."""
    rstd = 1.0 / np.sqrt(np.einsum("...d,...d->...", x, x) / x.shape[-1] + norm.eps)
    y = x * rstd[..., None].astype(x.dtype, copy=False)
    y *= norm.weight.data
    return y
