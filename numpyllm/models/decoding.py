"""What every decoder-only model's generation step shares: preallocated key/value buffers,
the checks, the BLAS thread setting, and the step loop.

Generating N tokens runs the model N times, each time on one new token. The arithmetic of
such a step is small (one matrix-vector product per weight matrix, and attention over the
cached keys), so what a step costs is mostly how many NumPy calls it makes. A model's
``forward`` does more than a step needs: it checks its inputs, keeps what its backward
would read, and a Hugging Face style cache (``past_key_values``, a list of arrays) grows by
concatenation, which copies every cached key and value at every step. A decoder runs only
the step:

- the keys and values of each layer live in two buffers (B, heads, max_len, dh) allocated
  once; a step writes its T new columns in place and attention reads the first P + T as a
  view;
- no caches for a backward and no dropout (this is inference), and the token ids are
  checked once per step, not once per layer;
- only the last position's logits are computed, the only ones the next token needs: a
  prompt of T tokens costs one (d, V) product for the head, not T of them.

    with model.incremental_decoder(batch=1) as decoder:
        logits = decoder.step(prompt_ids)          # (B, T) -> (B, V), the last position's
        logits = decoder.step(next_ids[:, None])   # (B, 1) -> (B, V), positions continue

A model's decoder (``gpt_decoding``, ``llama_decoding``) writes only its maths: the
embedding of the new tokens, one layer, and the head.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from numpyllm.nn.blas import blas_threads, threads_for_step


class IncrementalDecoder:
    """Base class: ``batch`` rows, at most ``max_len`` tokens in all, a (B, kv_heads,
    max_len, head_dim) key buffer and value buffer per layer in the model's dtype (after
    ``model.astype(...)``, make a new decoder). Parameters are read when a step runs, so a
    step always sees current weights.

    Use it as a context manager: inside, BLAS runs on the thread count the model's
    ``blas_threads`` asks for (see ``numpyllm.nn.blas.threads_for_step``); ``step`` also
    works outside, with BLAS as it is.

    Subclasses implement ``_embed(ids, P)`` -> x (B, T, d), ``_layer(index, x, P)`` -> x
    (may update x in place, writes the layer's new keys and values), ``_logits(last)``
    (B, d) -> (B, V), and ``_largest_weight()`` (elements of the largest matrix a step
    multiplies by, for the BLAS thread choice).
    """

    def __init__(
        self,
        model: Any,
        batch: int,
        max_len: int | None,
        *,
        limit: int,
        limit_text: str,
        n_layer: int,
        kv_heads: int,
        head_dim: int,
    ) -> None:
        max_len = limit if max_len is None else max_len
        if not 1 <= max_len <= limit:
            raise ValueError(f"max_len must be in 1 .. {limit_text}, got {max_len}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model = model
        self.max_len = max_len
        self.length = 0  # tokens seen so far: the next step's first position
        shape = (batch, kv_heads, max_len, head_dim)  # (B, heads, max_len, dh)
        self.keys = [np.zeros(shape, model.dtype) for _ in range(n_layer)]
        self.values = [np.zeros(shape, model.dtype) for _ in range(n_layer)]
        self._thread_limits: list[contextlib.AbstractContextManager] = []  # one per `with`

    def __enter__(self) -> IncrementalDecoder:
        limit = blas_threads(self._blas_threads())
        limit.__enter__()
        self._thread_limits.append(limit)
        return self

    def __exit__(self, *exc_info) -> None:
        self._thread_limits.pop().__exit__(*exc_info)

    def _blas_threads(self) -> int | None:
        return threads_for_step(self.model.blas_threads, self._largest_weight())

    def reset(self) -> None:
        """Forget every cached token: the next step starts again at position 0."""
        self.length = 0

    @property
    def cache_bytes(self) -> int:
        """Memory of the key-value buffers: 2 L B kv_heads max_len dh numbers."""
        return sum(int(a.nbytes) for a in [*self.keys, *self.values])

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed ids (B, T) at positions ``length`` .. ``length`` + T - 1; return the logits
        (B, V) of the last of them. The T tokens' keys and values join the cache."""
        ids = np.asarray(input_ids)
        self._check_ids(ids)
        P = self.length
        x = self._embed(ids, P)  # (B, T, d)
        for index in range(len(self.keys)):
            x = self._layer(index, x, P)
        self.length = P + ids.shape[1]
        return self._logits(x[:, -1])  # (B, d) -> (B, V): only the next token's position

    # ---- the model's maths ------------------------------------------------------------
    def _embed(self, ids: np.ndarray, P: int) -> np.ndarray:
        raise NotImplementedError

    def _layer(self, index: int, x: np.ndarray, P: int) -> np.ndarray:
        raise NotImplementedError

    def _logits(self, last: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _largest_weight(self) -> int:
        raise NotImplementedError

    # ---- checks ------------------------------------------------------------------------
    def _check_ids(self, ids: np.ndarray) -> None:
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
