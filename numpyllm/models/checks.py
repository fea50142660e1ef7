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
