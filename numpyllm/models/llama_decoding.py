"""Incremental decoding for Llama: the forward that generation runs, one step at a time.

As ``numpyllm.models.gpt_decoding`` does for GPT: the keys and values of each layer live in
two buffers allocated once, a step writes its new columns in place and attends over a view
of the first P + T; no caches for a backward, input ids checked once per step, and only the
last position's logits computed.

What differs for Llama:

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

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from numpyllm.functional.grouped_query_attention import grouped_query_attention_inference
from numpyllm.functional.rope import rope_forward
from numpyllm.functional.swiglu import swiglu_inference
from numpyllm.nn.blas import blas_threads, threads_for_step

if TYPE_CHECKING:
    from numpyllm.models.llama import Llama, LlamaDecoderLayer
    from numpyllm.nn.linear import Linear
    from numpyllm.nn.norms import RMSNorm


class LlamaDecoder:
    """A Llama's forward for generation, with a preallocated key-value cache of H_kv heads.

    ``batch`` rows, at most ``max_len`` tokens in all (default: the model's context). It
    reads the model's parameters when it runs (current weights); its buffers take the
    model's dtype when it is made. Use it as a context manager for the model's BLAS thread
    setting (see ``numpyllm.nn.blas.threads_for_step`` for "auto").
    """

    def __init__(self, model: Llama, batch: int = 1, max_len: int | None = None) -> None:
        config = model.config
        limit = config.max_seq_len
        if config.sliding_window is not None:  # beyond it, attention would be windowed
            limit = min(limit, config.sliding_window)
        max_len = limit if max_len is None else max_len
        if not 1 <= max_len <= limit:
            raise ValueError(
                f"max_len must be in 1 .. {limit} (max_seq_len={config.max_seq_len}, "
                f"sliding_window={config.sliding_window}), got {max_len}"
            )
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model = model
        self.max_len = max_len
        self.length = 0  # tokens seen so far: the next step's first position
        n_kv_head: int = config.n_kv_head  # type: ignore[assignment]  # set by __post_init__
        shape = (batch, n_kv_head, max_len, config.head_dim)  # (B, H_kv, max_len, dh)
        self.keys = [np.zeros(shape, model.dtype) for _ in range(config.n_layer)]
        self.values = [np.zeros(shape, model.dtype) for _ in range(config.n_layer)]
        self._thread_limits: list[contextlib.AbstractContextManager] = []

    def __enter__(self) -> LlamaDecoder:
        limit = blas_threads(self._blas_threads())
        limit.__enter__()
        self._thread_limits.append(limit)
        return self

    def __exit__(self, *exc_info) -> None:
        self._thread_limits.pop().__exit__(*exc_info)

    def _blas_threads(self) -> int | None:
        largest = max(p.data.size for p in self.model.parameters())
        return threads_for_step(self.model.blas_threads, largest)

    def reset(self) -> None:
        """Forget every cached token: the next step starts again at position 0."""
        self.length = 0

    @property
    def cache_bytes(self) -> int:
        """Memory of the key-value buffers: 2 L B H_kv max_len dh numbers."""
        return sum(int(a.nbytes) for a in [*self.keys, *self.values])

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed ids (B, T) at positions ``length`` .. ``length`` + T - 1; return the logits
        (B, V) of the last of them. The T tokens' keys and values join the cache."""
        ids = np.asarray(input_ids)
        B, T = self._check_ids(ids)
        P = self.length
        model = self.model
        rope = model.rope(P, T)
        x = model.model.embed_tokens.weight.data[ids]  # (B, T, d), a fresh gather
        for index, layer in enumerate(model.model.layers):
            x = self._layer(layer, index, x, P, rope)
        self.length = P + T
        last = _norm(model.model.norm, x[:, -1])  # (B, d): only the next token's position
        if model.lm_head is None:
            return last @ model.model.embed_tokens.weight.data.T  # (B, d) @ (d, V), tied
        return model.lm_head.project(last)  # (B, V)

    def _layer(
        self, layer: LlamaDecoderLayer, index: int, x: np.ndarray, P: int, rope: tuple
    ) -> np.ndarray:
        """a = x + attn(norm_1(x)), y = a + mlp(norm_2(a)), as the layer computes them in
        its forward, with this layer's cache."""
        B, T, _ = x.shape
        attn = layer.self_attn
        H, Hkv, dh = attn.n_head, attn.n_kv_head, attn.head_dim
        h = _norm(layer.input_layernorm, x)  # (B, T, d)
        q = _affine(attn.q_proj, h).reshape(B, T, H, dh).transpose(0, 2, 1, 3)  # (B, H, T, dh)
        k = _affine(attn.k_proj, h).reshape(B, T, Hkv, dh).transpose(0, 2, 1, 3)
        v = _affine(attn.v_proj, h).reshape(B, T, Hkv, dh).transpose(0, 2, 1, 3)
        q, _ = rope_forward(q, *rope)
        keys, values = self.keys[index], self.values[index]
        keys[:, :, P : P + T], _ = rope_forward(k, *rope)  # stored rotated
        values[:, :, P : P + T] = v
        heads = grouped_query_attention_inference(
            q, keys[:, :, : P + T], values[:, :, : P + T], causal=True
        )  # (B, H, T, dh)
        x += _affine(attn.o_proj, heads.transpose(0, 2, 1, 3).reshape(B, T, H * dh))
        mlp = layer.mlp
        h = _norm(layer.post_attention_layernorm, x)
        hidden = swiglu_inference(_affine(mlp.gate_proj, h), _affine(mlp.up_proj, h))
        x += _affine(mlp.down_proj, hidden)
        return x

    def _check_ids(self, ids: np.ndarray) -> tuple[int, int]:
        batch = self.keys[0].shape[0]
        if ids.ndim != 2 or ids.shape[0] != batch or ids.shape[1] < 1 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"input_ids must be an integer array (batch={batch}, T >= 1), got dtype "
                f"{ids.dtype} shape {ids.shape}"
            )
        vocab = self.model.config.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise ValueError(f"token id {bad} is out of range for vocab_size {vocab}")
        if self.length + ids.shape[1] > self.max_len:
            raise ValueError(
                f"{self.length} cached + {ids.shape[1]} new tokens exceed the decoder's "
                f"max_len={self.max_len}; reset() it to start again"
            )
        return ids.shape


def _norm(norm: RMSNorm, x: np.ndarray) -> np.ndarray:
    """x / sqrt(mean(x²) + ε) · w over the last axis, with no cache."""
    rstd = 1.0 / np.sqrt(np.einsum("...d,...d->...", x, x) / x.shape[-1] + norm.eps)
    y = x * rstd[..., None].astype(x.dtype, copy=False)
    y *= norm.weight.data
    return y


def _affine(linear: Linear, x: np.ndarray) -> np.ndarray:
    """x W (+ b) over x's last axis through the layer's own method (so a LoRA linear works
    here too); nothing is kept."""
    return linear.project(x)
