"""Incremental decoding: the GPT forward that generation runs, one step at a time.

Generating N tokens runs the model N times, each time on one new token. The arithmetic of
such a step is small (one matrix-vector product per weight matrix, and attention over the
cached keys), so what a step costs is mostly how many NumPy calls it makes. ``GPT.forward``
does more than a step needs: it checks its inputs in every layer, keeps what its backward
would read, and its Hugging Face style cache (``past_key_values``, a list of arrays) grows by
concatenation, which copies every cached key and value at every step.

``GPTDecoder`` runs only the step, with the same maths and the same functional ops:

- the keys and values of each layer live in two buffers (B, H, max_len, dh) allocated once;
  a step writes its T new columns in place and attention reads the first P + T as a view;
- no caches for a backward and no dropout (this is inference), and the token ids are
  checked once per step, not once per layer;
- only the last position's logits are computed, the only ones the next token needs: a
  prompt of T tokens costs one (d, V) product for the head, not T of them.

    with model.incremental_decoder(batch=1) as decoder:
        logits = decoder.step(prompt_ids)        # (B, T) -> (B, V), the last position's
        logits = decoder.step(next_ids[:, None])  # (B, 1) -> (B, V), positions continue

Logits agree with ``GPT.forward``'s to rounding (the tests check both dtypes).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from numpyllm.functional.attention import attention_inference
from numpyllm.functional.multi_head_attention import merge_heads
from numpyllm.functional.norms import layer_norm_inference
from numpyllm.nn.blas import blas_threads, threads_for_step

if TYPE_CHECKING:
    from numpyllm.models.gpt import GPT, Block
    from numpyllm.nn.norms import LayerNorm

class GPTDecoder:
    """A GPT's forward for generation, with a preallocated key-value cache.

    ``batch`` rows, at most ``max_len`` tokens in all (default: the model's context). The
    decoder reads the model's parameters when it runs, so it always sees current weights,
    and it always runs as in evaluation (no dropout). Its key-value buffers take the
    model's dtype when it is made: after ``model.astype(...)``, make a new decoder.

    Use it as a context manager: inside, BLAS runs on the thread count the model's
    ``blas_threads`` asks for (see ``numpyllm.nn.blas.threads_for_step``); ``step`` also works
    outside, with BLAS as it is.
    """

    def __init__(self, model: GPT, batch: int = 1, max_len: int | None = None) -> None:
        config = model.config
        max_len = config.max_seq_len if max_len is None else max_len
        if not 1 <= max_len <= config.max_seq_len:
            raise ValueError(
                f"max_len must be in 1 .. max_seq_len={config.max_seq_len}, got {max_len}"
            )
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model = model
        self.max_len = max_len
        self.length = 0  # tokens seen so far: the next step's first position
        dtype = model.wte.weight.data.dtype
        shape = (batch, config.n_head, max_len, config.head_dim)  # (B, H, max_len, dh)
        self.keys = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.values = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self._thread_limits: list[contextlib.AbstractContextManager] = []  # one per `with`

    def __enter__(self) -> GPTDecoder:
        limit = blas_threads(self._blas_threads())
        limit.__enter__()
        self._thread_limits.append(limit)
        return self

    def __exit__(self, *exc_info) -> None:
        self._thread_limits.pop().__exit__(*exc_info)

    def _blas_threads(self) -> int | None:
        weights = [*self.model.h[0].parameters(), self.model.wte.weight]  # wte: also the head
        return threads_for_step(self.model.blas_threads, max(p.data.size for p in weights))

    def reset(self) -> None:
        """Forget every cached token: the next step starts again at position 0."""
        self.length = 0

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed ids (B, T), positions ``length`` .. ``length`` + T - 1, and return the logits
        (B, V) of the last of them. The T tokens' keys and values join the cache."""
        ids = np.asarray(input_ids)
        B, T = self._check_ids(ids)
        P = self.length
        model = self.model
        x = model.wte.weight.data[ids]  # (B, T, d), a fresh gather
        x += model.wpe.weight.data[P : P + T]  # + positions P .. P + T - 1
        for layer, block in enumerate(model.h):
            x = self._block(block, layer, x, P)
        self.length = P + T
        last = _norm(model.ln_f, x[:, -1])  # (B, d): only the next token's position
        return last @ model.wte.weight.data.T  # (B, d) @ (d, V): the tied head

    def _block(self, block: Block, layer: int, x: np.ndarray, P: int) -> np.ndarray:
        """One pre-LayerNorm block on x (B, T, d), as ``Block.forward`` computes it in eval:
        a = x + attn(ln_1(x)), y = a + mlp(ln_2(a))."""
        B, T, d = x.shape
        H = block.attn.n_head
        qkv = block.attn.c_attn.project(_norm(block.ln_1, x))  # (B, T, 3d)
        q, k, v = qkv.reshape(B, T, 3, H, d // H).transpose(2, 0, 3, 1, 4)  # (B, H, T, dh) views
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, P : P + T] = k  # the new tokens' columns, written in place
        values[:, :, P : P + T] = v
        # causal, end-aligned: new query i sees the P cached keys and new keys 0 .. i
        heads = attention_inference(q, keys[:, :, : P + T], values[:, :, : P + T], causal=True)
        x += block.attn.c_proj.project(merge_heads(heads))  # (B, H, T, dh) -> (B, T, d)
        mlp = block.mlp
        hidden, _ = mlp.act_forward(mlp.c_fc.project(_norm(block.ln_2, x)))  # (B, T, d_ff)
        x += mlp.c_proj.project(hidden)
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


def _norm(norm: LayerNorm, x: np.ndarray) -> np.ndarray:
    return layer_norm_inference(x, norm.weight.data, norm.bias.data, norm.eps)

