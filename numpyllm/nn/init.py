"""Weight initialisation: every draw comes from a Generator the caller seeded."""

from __future__ import annotations

import numpy as np

from numpyllm.nn.parameter import Parameter


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype) -> Parameter:
    return Parameter((rng.standard_normal(shape) * std).astype(dtype))


def zeros(shape: tuple[int, ...], dtype) -> Parameter:
    return Parameter(np.zeros(shape, dtype=dtype))


def ones(shape: tuple[int, ...], dtype) -> Parameter:
    return Parameter(np.ones(shape, dtype=dtype))


def child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent Generator (for a dropout layer), seeded from the model's."""
    return np.random.default_rng(int(rng.integers(2**63)))
