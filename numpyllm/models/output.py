"""What a model call returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ModelOutput:
    """``logits`` always; ``loss`` when labels were given (a Python float), else None.

    Models fill the other fields they have: ``hidden_states`` (last layer, before
    any head), ``pooler_output`` (BERT), ``encoder_hidden_states`` (T5),
    ``past_key_values`` (when called with ``use_cache=True``).
    """

    logits: np.ndarray
    loss: float | None = None
    hidden_states: np.ndarray | None = None
    pooler_output: np.ndarray | None = None
    encoder_hidden_states: np.ndarray | None = None
    past_key_values: Any = None
