"""A model's linear layers under their Hugging Face names, and PEFT's target-module matching."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from numpyllm.nn.linear import Linear


@dataclass(frozen=True)
class ModelKind:
    """What the adapter format needs to know about one model class."""

    name: str  # the Hugging Face model_type: "gpt2", "bert", "t5", "llama"
    task_type: str | None  # PEFT's task type for the usual head
    default_targets: tuple[str, ...]  # PEFT's defaults for the architecture
    hf_module: str  # numpyllm.hf module with ``tensor_map(config)``


KINDS = {
    "GPT": ModelKind("gpt2", "CAUSAL_LM", ("c_attn",), "numpyllm.hf.gpt2"),
    "BERT": ModelKind("bert", None, ("query", "value"), "numpyllm.hf.bert"),
    "T5": ModelKind("t5", "SEQ_2_SEQ_LM", ("q", "v"), "numpyllm.hf.t5"),
    "Llama": ModelKind("llama", "CAUSAL_LM", ("q_proj", "v_proj"), "numpyllm.hf.llama"),
}


def kind_of(model: Any) -> ModelKind:
    for cls in type(model).__mro__:
        if cls.__name__ in KINDS and cls.__module__.startswith("numpyllm.models."):
            return KINDS[cls.__name__]
    raise TypeError(
        f"LoRA adapters are supported for numpyllm's {', '.join(KINDS)} models, got "
        f"{type(model).__name__}"
    )


@dataclass(frozen=True)
class LinearLayer:
    ours: str  # numpyllm's dotted module name: "h.0.attn.c_attn"
    hf: str  # the transformers module name: "transformer.h.0.attn.c_attn"
    layer: Linear
    conv1d: bool  # stored (in, out) by transformers too (GPT-2's Conv1D): fan_in_fan_out


def tensor_map(model: Any) -> list[Any]:
    """The model's parameters under their transformers names (``numpyllm.hf``'s TensorMap)."""
    import importlib

    return importlib.import_module(kind_of(model).hf_module).tensor_map(model.config)


def linear_layers(model: Any) -> list[LinearLayer]:
    """Every Linear of the model that its transformers counterpart also has, in order."""
    by_weight = {entry.ours: entry for entry in tensor_map(model)}
    layers = []
    for name, module in model.named_modules():
        entry = by_weight.get(f"{name}.weight")
        if isinstance(module, Linear) and entry is not None:
            hf_name = entry.hf.removesuffix(".weight")
            layers.append(LinearLayer(name, hf_name, module, conv1d=not entry.transpose))
    return layers


def matches(target: list[str] | str, layer: LinearLayer) -> bool:
    """PEFT's rule: a string is a regular expression the whole name must match; a list
    matches a name equal to one entry or ending with "." + entry. Both the transformers
    name and numpyllm's are tried."""
    names = (layer.hf, layer.ours)
    if isinstance(target, str):
        return any(re.fullmatch(target, name) for name in names)
    return any(name == t or name.endswith("." + t) for name in names for t in target)


def select(model: Any, target: list[str] | str) -> list[LinearLayer]:
    """The layers ``target`` names; ValueError naming what matched nothing, with the choices."""
    layers = linear_layers(model)
    chosen = [layer for layer in layers if matches(target, layer)]
    unmatched = (
        [t for t in target if not any(matches([t], layer) for layer in layers)]
        if isinstance(target, list)
        else ([] if chosen else [target])
    )
    if unmatched:
        short = sorted({layer.hf.rsplit(".", 1)[-1] for layer in layers})
        ours = sorted({layer.ours.rsplit(".", 1)[-1] for layer in layers})
        raise ValueError(
            f"target_modules {', '.join(repr(t) for t in unmatched)} match no linear layer of "
            f"this {type(model).__name__}; its linear layers are {', '.join(short)} (numpyllm "
            f"names: {', '.join(ours)}), e.g. {layers[0].hf}"
            if layers
            else f"target_modules {unmatched!r}: this {type(model).__name__} has no linear layers"
        )
    return chosen
