"""Which numpyllm model reads and writes which Hugging Face model type: the one registry.

Every format module (``numpyllm.hf.gpt2``, ``bert``, ``t5``, ``llama``) offers the same few names:

    MODEL_TYPE        config.json's model_type it writes ("gpt2")
    ARCHITECTURES     the transformers classes whose folders it reads
    model_class()     the numpyllm model class (GPT)
    config_from_hf    config.json (a dict) -> the numpyllm config
    load(path, dtype) a folder -> the model, in eval mode
    save(model, path, token_ids=None)
                      config.json, generation_config.json and model.safetensors of a model

A new model type is one more line in ``FORMATS`` (several model types may share a module:
transformers names Llama's relatives mistral, qwen2, ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

#: config.json's model_type -> the module that reads and writes it
FORMATS: dict[str, str] = {
    "gpt2": "numpyllm.hf.gpt2",
    "bert": "numpyllm.hf.bert",
    "t5": "numpyllm.hf.t5",
    "llama": "numpyllm.hf.llama",
    "mistral": "numpyllm.hf.llama",  # read as Llama (a sliding window bounds the context)
    "qwen2": "numpyllm.hf.llama",  # read as Llama with q/k/v biases
}


def format_module(model_type: str) -> ModuleType:
    return importlib.import_module(FORMATS[model_type])


def format_for_config(config: Mapping[str, Any], where: str = "config.json") -> ModuleType:
    """The format of a config.json: by its model_type, else by its architectures."""
    model_type = config.get("model_type")
    if model_type in FORMATS:
        return format_module(model_type)
    if model_type is None:
        for name in config.get("architectures") or ():
            for candidate in FORMATS:
                if name in format_module(candidate).ARCHITECTURES:
                    return format_module(candidate)
    raise ValueError(
        f"{where} names model_type {model_type!r}"
        + (f" (architectures {config.get('architectures')})" if config.get("architectures") else "")
        + f", which numpyllm cannot load; supported model types: {', '.join(sorted(FORMATS))}"
    )


def format_for_model(model: Any) -> ModuleType | None:
    """The format that saves ``model`` (its class exactly, not a subclass), or None."""
    for model_type in FORMATS:
        module = format_module(model_type)
        if type(model) is module.model_class():
            return module
    return None
