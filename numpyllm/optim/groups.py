"""Split a model's parameters into the usual weight-decay and no-decay groups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from numpyllm.nn.parameter import Parameter

#: A parameter whose name contains one of these is an embedding table (GPT-2's wte/wpe,
#: BERT's *_embeddings, T5's shared table and relative position bias) and is not decayed.
EMBEDDING_NAME_PARTS = ("wte", "wpe", "embed", "embedding", "shared", "relative_attention_bias")


def param_groups_for_weight_decay(
    model_or_named_params: Any, weight_decay: float
) -> list[dict[str, Any]]:
    """Two parameter groups, ``[decay, no_decay]``, for an optimizer.

    Decayed (``weight_decay``): matrices, i.e. parameters with ``ndim >= 2``,
    the weights of the linear maps, whose size decay is meant to keep in check.

    Not decayed (``weight_decay = 0.0``): biases and LayerNorm / RMSNorm weights
    (``ndim < 2``), where shrinking towards zero only fights the model, and
    embedding tables (names containing any of :data:`EMBEDDING_NAME_PARTS`),
    whose rows for rare tokens would otherwise decay away between the rare
    steps that use them.

    ``model_or_named_params`` is a Module (anything with ``named_parameters()``)
    or an iterable of ``(name, Parameter)`` pairs. A parameter listed under two
    names (a tied weight) is placed once, by its first name. Both groups are
    always returned, even when one is empty; frozen parameters (``requires_grad =
    False``) are in neither. Each group also carries ``"names"`` (the
    parameters' names, in order) for inspection.
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float, np.floating)):
        raise TypeError(f"weight_decay must be a number, got {weight_decay!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if hasattr(model_or_named_params, "named_parameters"):
        named: Iterable = model_or_named_params.named_parameters()
    else:
        named = model_or_named_params
    decay: dict[str, Any] = {"params": [], "names": [], "weight_decay": float(weight_decay)}
    no_decay: dict[str, Any] = {"params": [], "names": [], "weight_decay": 0.0}
    seen: set[int] = set()
    for item in named:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Parameter)):
            raise TypeError(f"expected (name, Parameter) pairs, got {item!r}")
        name, p = item
        if id(p) in seen or not p.requires_grad:
            continue  # a tied weight's second name, or a frozen parameter
        seen.add(id(p))
        group = decay if p.data.ndim >= 2 and not is_embedding_name(name) else no_decay
        group["params"].append(p)
        group["names"].append(name)
    return [decay, no_decay]


def is_embedding_name(name: str) -> bool:
    """True if a parameter's dotted name marks it as an embedding table."""
    lowered = name.lower()
    return any(part in lowered for part in EMBEDDING_NAME_PARTS)
