"""Incremental decoding: the GPT forward that generation runs, one step at a time.

The scaffolding (preallocated key/value buffers, checks, the step loop, why a step is
cheaper than ``GPT.forward``) is ``numpyllm.models.decoding``'s; here is GPT's maths for one
step: token plus position embeddings, pre-LayerNorm blocks with H key/value heads, the tied
head.

    with model.incremental_decoder(batch=1) as decoder:
        logits = decoder.step(prompt_ids)        # (B, T) -> (B, V), the last position's
        logits = decoder.step(next_ids[:, None])  # (B, 1) -> (B, V), positions continue

Logits agree with ``GPT.forward``'s to rounding (the tests check both dtypes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from numpyllm.functional.attention import attention_inference
from numpyllm.functional.multi_head_attention import merge_heads
from numpyllm.functional.norms import layer_norm_inference
from numpyllm.models.decoding import IncrementalDecoder

if TYPE_CHECKING:
    from numpyllm.models.gpt import GPT
    from numpyllm.nn.norms import LayerNorm


class GPTDecoder(IncrementalDecoder):
    """A GPT's forward for generation, with a preallocated key-value cache of H heads
    (see ``numpyllm.models.decoding.IncrementalDecoder``): ``batch`` rows, at most
    ``max_len`` tokens in all (default: the model's context); always as in evaluation (no
    dropout)."""

    model: GPT

    def __init__(self, model: GPT, batch: int = 1, max_len: int | None = None) -> None:
        config = model.config
        super().__init__(model, batch, max_len, limit=config.max_seq_len,
                         limit_text=f"max_seq_len={config.max_seq_len}", n_layer=config.n_layer,
                         kv_heads=config.n_head, head_dim=config.head_dim)  # fmt: skip

    def _largest_weight(self) -> int:
        weights = [*self.model.h[0].parameters(), self.model.wte.weight]  # wte: also the head
        return max(p.data.size for p in weights)

    def _embed(self, ids: np.ndarray, P: int) -> np.ndarray:
        x = self.model.wte.weight.data[ids]  # (B, T, d), a fresh gather
        x += self.model.wpe.weight.data[P : P + ids.shape[1]]  # + positions P .. P + T - 1
        return x

    def _logits(self, last: np.ndarray) -> np.ndarray:
        return _norm(self.model.ln_f, last) @ self.model.wte.weight.data.T  # (B, d) @ (d, V)

    def _layer(self, index: int, x: np.ndarray, P: int) -> np.ndarray:
        """One pre-LayerNorm block on x (B, T, d), as ``Block.forward`` computes it in eval:
        a = x + attn(ln_1(x)), y = a + mlp(ln_2(a))."""
        block = self.model.h[index]
        B, T, d = x.shape
        H = block.attn.n_head
        qkv = block.attn.c_attn.project(_norm(block.ln_1, x))  # (B, T, 3d)
        q, k, v = qkv.reshape(B, T, 3, H, d // H).transpose(2, 0, 3, 1, 4)  # (B, H, T, dh) views
        keys, values = self.keys[index], self.values[index]
        keys[:, :, P : P + T] = k  # the new tokens' columns, written in place
        values[:, :, P : P + T] = v
        # causal, end-aligned: new query i sees the P cached keys and new keys 0 .. i
        heads = attention_inference(q, keys[:, :, : P + T], values[:, :, : P + T], causal=True)
        x += block.attn.c_proj.project(merge_heads(heads))  # (B, H, T, dh) -> (B, T, d)
        mlp = block.mlp
        hidden, _ = mlp.act_forward(mlp.c_fc.project(_norm(block.ln_2, x)))  # (B, T, d_ff)
        x += mlp.c_proj.project(hidden)
        return x


def _norm(norm: LayerNorm, x: np.ndarray) -> np.ndarray:
    return layer_norm_inference(x, norm.weight.data, norm.bias.data, norm.eps)
