"""Optimizers, learning-rate schedules, gradient clipping and weight-decay groups."""

from numpyllm.optim.adam import Adam, AdamW
from numpyllm.optim.clip import clip_grad_norm
from numpyllm.optim.groups import param_groups_for_weight_decay
from numpyllm.optim.optimizer import Optimizer
from numpyllm.optim.schedules import (
    LRScheduler,
    constant_with_warmup,
    warmup_cosine,
    warmup_linear,
)
from numpyllm.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "clip_grad_norm",
    "LRScheduler",
    "warmup_cosine",
    "warmup_linear",
    "constant_with_warmup",
    "param_groups_for_weight_decay",
]
