"""Input and config checks the models share: one clear message per kind of mistake."""

from __future__ import annotations

from typing import Any

import numpy as np

IGNORE_INDEX = -100


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_ints(config: Any, *names: str) -> None:
    """Each named field of a config dataclass is an integer >= 1."""
    for name in names:
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            raise ValueError(
                f"{type(config).__name__}.{name} must be a positive integer, got {value!r}"
            )


def positive_floats(config: Any, *names: str) -> None:
    """Each named field is a number > 0 (eps, init scales)."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{type(config).__name__}.{name} must be > 0, got {value!r}")


def probability(config: Any, name: str) -> None:
    """A dropout rate: in [0, 1)."""
    value = getattr(config, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{type(config).__name__}.{name} must be in [0, 1), got {value!r}")


def divisible(config: Any, name: str, by: str) -> None:
    value, divisor = getattr(config, name), getattr(config, by)
    if value % divisor != 0:
        raise ValueError(
            f"{type(config).__name__}.{name} ({value}) must be divisible by {by} ({divisor})"
        )


def one_of(config: Any, name: str, choices: Any) -> None:
    """A field whose value must be one of ``choices`` (e.g. an activation name)."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(
            f"{type(config).__name__}.{name} must be one of {sorted(choices)}, got {value!r}"
        )


def token_id(config: Any, name: str, optional: bool = False) -> None:
    """A special-token field is an id of the vocabulary (or None when ``optional``)."""
    value = getattr(config, name)
    if value is None and optional:
        return
    if not _is_int(value) or not 0 <= value < config.vocab_size:
        allowed = "None or an id" if optional else "an id"
        raise ValueError(
            f"{type(config).__name__}.{name} must be {allowed} in [0, vocab_size="
            f"{config.vocab_size}), got {value!r}"
        )


def token_ids(ids: Any, vocab_size: int, name: str = "input_ids", labels: bool = False):
    """A non-empty integer (batch, length) array of ids in [0, vocab_size); with ``labels``
    the ignore index -100 is allowed too. Returns it as an array."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(
            f"{name} must be 2-D (batch, length) with at least one token, got shape {ids.shape}; "
            "wrap a single sequence as ids[None, :]"
        )
    bad = (ids < 0) | (ids >= vocab_size)
    if labels:
        bad &= ids != IGNORE_INDEX
    if bad.any():
        value = int(ids[bad][0])
        if labels:
            raise ValueError(
                f"label {value} is out of range for vocab_size {vocab_size} "
                f"(use {IGNORE_INDEX} to ignore a position)"
            )
        raise ValueError(f"token id {value} in {name} is out of range for vocab_size {vocab_size}")
    return ids


def padding_mask(attention_mask: Any, batch: int, total: int) -> np.ndarray | None:
    """attention_mask (B, P + T), 1 = real token, 0 = padding -> boolean (B, 1, 1, P + T), the
    same for every head and query; None when nothing is padded (attention then skips it)."""
    if attention_mask is None:
        return None
    keep = np.asarray(attention_mask)
    if keep.shape != (batch, total):
        raise ValueError(
            f"attention_mask must have shape (batch, past + seq_len) = {(batch, total)}, "
            f"got {keep.shape}"
        )
    keep = keep.astype(bool, copy=False)
    return None if keep.all() else keep[:, None, None, :]


def shifted_targets(labels: Any, shape: tuple[int, int], vocab_size: int) -> np.ndarray:
    """A causal language model's targets: targets[:, t] = labels[:, t + 1], and IGNORE_INDEX
    at the last position.

    Equivalent to Hugging Face's loss on logits[:, :-1] vs labels[:, 1:] (the last position
    has no next token), without slicing (copying) the (B, T, V) logits.

    ``labels`` may also hold one more column than ``input_ids``: the window's next token
    (B, T + 1). Then the last position has a target too, which training needs: with (B, T)
    labels and T = max_seq_len, no loss ever reaches the last position.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    B, T = shape
    if labels.shape not in ((B, T), (B, T + 1)):
        raise ValueError(
            f"labels must have the shape of input_ids {shape}, or (B, T + 1) with the "
            f"window's next token, got {labels.shape}"
        )
    token_ids(labels, vocab_size, "labels", labels=True)
    targets = np.full(shape, IGNORE_INDEX, dtype=np.int64)  # (B, T)
    targets[:, : labels.shape[1] - 1] = labels[:, 1:]
    return targets

