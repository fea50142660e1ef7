"""What the Trainer trains on: objects that hand out batches as keyword arguments of a model.

The protocol is three methods::

    train_batch(batch_size, rng)        -> dict[str, ndarray]   a random batch, e.g.
                                           {"input_ids": ..., "labels": ...}
    eval_batches(batch_size, max_batches) -> Iterator[dict]     the same batches every time
                                           (nothing at all when there is no evaluation data)
    steps_per_epoch(batch_size)         -> int                  steps that make one epoch

A batches object takes all its randomness from the ``rng`` it is given and keeps no
state of its own between calls: that is what lets a resumed run draw exactly the
batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Batches(Protocol):
    def train_batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]: ...

    def eval_batches(
        self, batch_size: int, max_batches: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]: ...

    def steps_per_epoch(self, batch_size: int) -> int: ...


class LMBatches:
    """Next-token prediction on a :class:`~numpyllm.data.TokenDataset`.

    The model shifts the labels itself (as Hugging Face's GPT-2 does). A training row
    is a window of ``seq_len + 1`` consecutive ids, the first ``seq_len`` as
    ``input_ids`` and all of them as ``labels``, so all ``seq_len`` positions are
    trained, the last included (with equal-length labels the last position never
    gets a target, and at seq_len = max_seq_len its position embedding would never
    learn). Training windows start at random positions of the "train" split;
    evaluation windows of ``seq_len`` ids tile the "val" split in order (each id after
    the first scored once), so every evaluation sees the same tokens. One epoch is
    ``n_train_tokens // (batch_size * seq_len)`` steps.
    """

    def __init__(self, dataset: Any, seq_len: int) -> None:
        if not hasattr(dataset, "sample_windows"):
            raise TypeError(
                "LMBatches needs a TokenDataset (with sample_windows), "
                f"got {type(dataset).__name__}"
            )
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
            raise ValueError(f"seq_len must be an integer >= 2 (input and target), got {seq_len!r}")
        self.dataset = dataset
        self.seq_len = int(seq_len)
        n_train = len(dataset.split_tokens("train"))
        if n_train < self.seq_len + 1:
            raise ValueError(
                f"the training split has {n_train} tokens; a window needs seq_len + 1 = "
                f"{self.seq_len + 1}"
            )

    def train_batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        windows = self.dataset.sample_windows("train", batch_size, self.seq_len + 1, rng)
        return {"input_ids": windows[:, :-1], "labels": windows}  # (B, T) and (B, T + 1)

    def eval_batches(
        self, batch_size: int, max_batches: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        if len(self.dataset.split_tokens("val")) < self.seq_len:
            return  # no validation split (or one shorter than a window): nothing to evaluate
        windows = self.dataset.iter_windows("val", batch_size, self.seq_len)
        for i, batch in enumerate(windows):
            if max_batches is not None and i >= max_batches:
                return
            yield {"input_ids": batch, "labels": batch}

    def steps_per_epoch(self, batch_size: int) -> int:
        n_train = len(self.dataset.split_tokens("train"))
        return max(1, n_train // (batch_size * self.seq_len))


class ArrayBatches:
    """Batches of rows drawn from arrays the caller built (classification, T5 tasks, ...).

    ``train`` (and ``eval``) map model keyword names to arrays sharing their first
    axis, e.g. ``{"input_ids": (N, T), "attention_mask": (N, T), "labels": (N,)}``.
    Training rows are drawn uniformly at random (with replacement); evaluation
    takes the rows in order. One epoch is ``ceil(N / batch_size)`` steps.
    """

    def __init__(
        self,
        train: Mapping[str, np.ndarray],
        eval: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.train = _check_arrays(train, "train")
        self.eval = _check_arrays(eval, "eval") if eval is not None else None
        if self.eval is not None and set(self.eval) != set(self.train):
            raise ValueError(
                f"eval arrays have keys {sorted(self.eval)}, train arrays {sorted(self.train)}"
            )

    @property
    def n_train(self) -> int:
        return len(next(iter(self.train.values())))

    def train_batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rows = rng.integers(0, self.n_train, size=batch_size)  # (B,)
        return {key: value[rows] for key, value in self.train.items()}

    def eval_batches(
        self, batch_size: int, max_batches: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        if self.eval is None:
            return
        n = len(next(iter(self.eval.values())))
        for i, first in enumerate(range(0, n, batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield {key: value[first : first + batch_size] for key, value in self.eval.items()}

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_train / batch_size)


def _check_arrays(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError(f"{what} must be a non-empty dict of arrays, got {arrays!r}")
    out = {str(key): np.asarray(value) for key, value in arrays.items()}
    lengths = {key: (value.shape[0] if value.ndim else None) for key, value in out.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise ValueError(f"{what} arrays must share their first axis (rows), got lengths {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError(f"{what} arrays hold no rows")
    return out


def as_batches(data: Any, seq_len: int | None = None) -> Batches:
    """A batches object from a batches object, a TokenDataset or a dict of arrays."""
    if all(hasattr(data, name) for name in ("train_batch", "eval_batches", "steps_per_epoch")):
        return data
    if hasattr(data, "sample_windows"):
        if seq_len is None:
            raise ValueError("a TokenDataset needs seq_len (tokens per row) to make batches")
        return LMBatches(data, seq_len)
    if isinstance(data, Mapping):
        return ArrayBatches(data)
    raise TypeError(
        f"expected a batches object (train_batch / eval_batches / steps_per_epoch), a "
        f"TokenDataset or a dict of arrays, got {type(data).__name__}"
    )
