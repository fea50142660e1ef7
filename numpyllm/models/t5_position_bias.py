"""T5's relative position bias: one learned scalar per (distance bucket, head), added to the scores.

T5 has no position embeddings. Instead, every attention score between a query
at position i and a key at position j gets a learned number added to it that
depends only on the head and on the *bucket* of the relative position
r = j - i (key minus query):

    S[b, h, i, j] = q_i . k_j + table[bucket(j - i), h]

The table (num_buckets, n_head) lives in the first layer of a stack; the bias
it gives, (1, H, Tq, Tk), is computed once per forward pass and added by
every layer of that stack.

Buckets. With ``bidirectional`` (the encoder) half of the buckets are for keys
after the query (r > 0) and half for keys at or before it; the decoder only
looks back, so every r > 0 maps to distance 0 and all buckets are for the past.
Writing n for the buckets of one direction and d = |r| (or max(-r, 0)):

    max_exact = n // 2
    bucket(d) = d                                                  if d < max_exact
              = min(n - 1, max_exact + floor(log(d / max_exact)
                                             / log(max_distance / max_exact)
                                             * (n - max_exact)))   otherwise

so small distances each get their own bucket and larger ones share
logarithmically wider buckets, every distance from max_distance on sharing the
last one. The bidirectional case adds n to the bucket of a key after the query.

Rounding. The reference implementation evaluates the log formula in float32,
and at distances where the real-valued expression is a whole number (for the
default 32 buckets and max distance 128: d = 16, 32, 64 in the encoder) the
float32 rounding decides which of two buckets is chosen. We evaluate it in
float32 as well, taking the logarithm in float64 and rounding it to float32
(NumPy's own float32 log is not correctly rounded, so it is less predictable).
This reproduces the reference for the default configuration and for all but
a handful of unusual (num_buckets, max_distance) pairs.

Backward. The bias is a table lookup, bias[0, h, i, j] = table[bucket[i, j], h],
so the gradient of the table is a scatter-add of the bias's gradient by bucket:

    dtable[k, h] = sum over (i, j) with bucket[i, j] = k of dbias[h, i, j]

where dbias is the sum of the gradients from every layer that added the bias
(the layers share it, so their gradients add) and over the batch.
"""

from __future__ import annotations

import math

import numpy as np

from numpyllm.functional.embedding import embedding_backward, embedding_forward
from numpyllm.nn import init
from numpyllm.nn.module import Module


def relative_position_bucket(
    relative_position: np.ndarray,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
    """The bucket index, in [0, num_buckets), of each relative position r = key - query.

    ``relative_position`` is an integer array of any shape; the result is int64 of
    the same shape. See the module docstring for the formula.
    """
    relative_position = np.asarray(relative_position)
    if not np.issubdtype(relative_position.dtype, np.integer):
        raise TypeError(f"relative positions must be integers, got dtype {relative_position.dtype}")
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    max_exact = per_direction // 2
    if max_exact < 1:
        raise ValueError(
            f"num_buckets={num_buckets} is too small: need at least "
            f"{4 if bidirectional else 2} buckets (bidirectional={bidirectional})"
        )
    if max_distance <= max_exact:
        raise ValueError(
            f"max_distance={max_distance} must exceed the {max_exact} exact buckets "
            f"(num_buckets={num_buckets}, bidirectional={bidirectional})"
        )
    relative_position = relative_position.astype(np.int64)
    offset: np.ndarray | int
    if bidirectional:
        offset = np.where(relative_position > 0, per_direction, 0)  # keys after the query
        distance = np.abs(relative_position)
    else:
        offset = 0
        distance = -np.minimum(relative_position, 0)  # keys after the query count as distance 0

    # Distances >= max_exact: log-spaced buckets, in float32 as the reference computes them.
    # max(d, 1) only keeps log(0) out of the entries that np.where discards below.
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
    log_ratio = np.log(ratio.astype(np.float64)).astype(np.float32)
    scaled = log_ratio / np.float32(math.log(max_distance / max_exact))
    scaled = scaled * np.float32(per_direction - max_exact)
    large = max_exact + scaled.astype(np.int64)  # truncation = floor, as scaled >= 0
    large = np.minimum(large, per_direction - 1)
    return offset + np.where(distance < max_exact, distance, large)


class RelativePositionBias(Module):
    """The learned table ``weight`` (num_buckets, n_head) and the bias (1, H, Tq, Tk) it gives.

    ``forward(query_length, key_length, offset=0)``: query i sits at absolute
    position offset + i and key j at position j (``offset`` is the number of
    cached tokens during generation). ``backward(dbias)`` takes the gradient of
    the bias summed over every layer that used it, of a shape broadcastable
    from (1, H, Tq, Tk) (e.g. (1, H, Tq, Tk) or (B, H, Tq, Tk)), and adds the
    table's gradient into ``weight.grad``.
    """

    def __init__(
        self,
        num_buckets: int,
        max_distance: int,
        n_head: int,
        bidirectional: bool,
        rng: np.random.Generator | None = None,
        std: float = 1.0,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.weight = init.normal(rng, (num_buckets, n_head), std, dtype)
        self._cache: tuple | None = None

    def buckets(self, query_length: int, key_length: int, offset: int = 0) -> np.ndarray:
        """(Tq, Tk) bucket indices for queries at offset + i and keys at j."""
        query_position = np.arange(query_length, dtype=np.int64)[:, None] + offset  # (Tq, 1)
        key_position = np.arange(key_length, dtype=np.int64)[None, :]  # (1, Tk)
        return relative_position_bucket(
            key_position - query_position,  # (Tq, Tk): r = key - query
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> np.ndarray:
        buckets = self.buckets(query_length, key_length, offset)  # (Tq, Tk)
        values, self._cache = embedding_forward(buckets, self.weight.data)  # (Tq, Tk, H)
        return values.transpose(2, 0, 1)[None]  # (Tq, Tk, H) -> (1, H, Tq, Tk)

    def backward(self, dbias: np.ndarray) -> None:
        if self._cache is None:
            raise RuntimeError("RelativePositionBias.backward called without a forward")
        dbias = np.asarray(dbias)
        dbias = dbias.reshape(-1, *dbias.shape[-3:]).sum(axis=0)  # (..., H, Tq, Tk) -> (H, Tq, Tk)
        dvalues = dbias.transpose(1, 2, 0)  # (H, Tq, Tk) -> (Tq, Tk, H)
        if self.weight.requires_grad:
            self.weight.grad += embedding_backward(dvalues, self._cache)  # scatter-add by bucket
        self._cache = None
