"""GPT-2 checkpoints (transformers' GPT2LMHeadModel / GPT2Model) <-> numpyllm's GPT.

numpyllm's GPT names its parameters as GPT-2 does and stores every projection (in, out), as
GPT-2's Conv1D does (the fused q|k|v projection ``c_attn`` included), so the mapping is the
identity up to the ``transformer.`` prefix:

    numpyllm                   transformers (GPT2LMHeadModel)          shape
    wte.weight                 transformer.wte.weight                  (V, d)
    wpe.weight                 transformer.wpe.weight                  (n_positions, d)
    h.{i}.ln_1.{weight,bias}   transformer.h.{i}.ln_1.{weight,bias}    (d,)
    h.{i}.attn.c_attn.weight   transformer.h.{i}.attn.c_attn.weight    (d, 3d)  q | k | v
    h.{i}.attn.c_attn.bias     transformer.h.{i}.attn.c_attn.bias      (3d,)
    h.{i}.attn.c_proj.*        transformer.h.{i}.attn.c_proj.*         (d, d), (d,)
    h.{i}.ln_2.*               transformer.h.{i}.ln_2.*                (d,)
    h.{i}.mlp.c_fc.*           transformer.h.{i}.mlp.c_fc.*            (d, d_ff), (d_ff,)
    h.{i}.mlp.c_proj.*         transformer.h.{i}.mlp.c_proj.*          (d_ff, d), (d,)
    ln_f.{weight,bias}         transformer.ln_f.{weight,bias}          (d,)
    (tied to wte.weight)       lm_head.weight                          not stored

Files from the hub's ``gpt2`` have no ``transformer.`` prefix and carry the causal-mask buffers
``h.{i}.attn.bias`` / ``h.{i}.attn.masked_bias``; both are accepted, the buffers ignored.

Config translation (transformers -> numpyllm): n_embd -> d_model, n_positions -> max_seq_len,
n_inner -> d_ff, layer_norm_epsilon -> layer_norm_eps, activation_function -> activation,
resid_pdrop -> dropout, initializer_range -> init_std. Dropout matters only in training:
numpyllm's GPT has one rate for the embeddings and residual branches and no dropout on the
attention probabilities, so a saved config says attn_pdrop 0.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from numpyllm.hf import common

MODEL_TYPE = "gpt2"
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
PREFIX = "transformer."
TIED = {"lm_head.weight": "transformer.wte.weight"}
# causal-mask buffers that older transformers versions saved with the weights
IGNORED = (r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",)
# numpyllm activation name -> transformers' name for the same function
ACTIVATION_TO_HF = {"gelu_tanh": "gelu_new"}
LOADER = "load_gpt2"

UNSUPPORTED = (
    ("scale_attn_weights", True, lambda v: v is True),
    ("scale_attn_by_inverse_layer_idx", False, lambda v: v is False),
    ("reorder_and_upcast_attn", False, lambda v: v is False),
    ("add_cross_attention", False, lambda v: v is False),
    ("tie_word_embeddings", True, lambda v: v is True),
)


def config_from_hf(hf: dict[str, Any]):
    """A GPTConfig from a GPT-2 config.json (as a dict)."""
    from numpyllm.models.gpt import GPTConfig

    common.check_config(hf, MODEL_TYPE, ARCHITECTURES, UNSUPPORTED, LOADER)
    activation = common.activation(hf, "activation_function", "gelu_new", LOADER)
    return GPTConfig(
        vocab_size=common.require(hf, "vocab_size", LOADER),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        d_model=hf.get("n_embd", 768),
        max_seq_len=hf.get("n_positions", 1024),
        d_ff=hf.get("n_inner"),
        dropout=hf.get("resid_pdrop", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=activation,
        init_std=hf.get("initializer_range", 0.02),
    )


def config_to_hf(config, dtype: str = "float32") -> dict[str, Any]:
    """The config.json that transformers' GPT2LMHeadModel reads for the same model."""
    # GPT-2's own vocabulary ends with <|endoftext|> (id 50256), its bos and eos; another
    # vocabulary has no known special ids, so none are claimed.
    eos = 50256 if config.vocab_size == 50257 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.d_model,
        "n_positions": config.max_seq_len,
        "n_inner": config.d_ff,
        "activation_function": ACTIVATION_TO_HF.get(config.activation, config.activation),
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": config.init_std,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_cache": True,
        "dtype": dtype,
    }


def model_class() -> Any:
    from numpyllm.models.gpt import GPT

    return GPT


def tensor_map(config) -> list[common.TensorMap]:
    """One entry per numpyllm GPT parameter (see the module docstring's table)."""
    d, d_ff = config.d_model, config.d_ff
    shapes = {
        "ln_1.weight": (d,), "ln_1.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
        "ln_2.weight": (d,), "ln_2.bias": (d,),
        "mlp.c_fc.weight": (d, d_ff), "mlp.c_fc.bias": (d_ff,),
        "mlp.c_proj.weight": (d_ff, d), "mlp.c_proj.bias": (d,),
    }  # fmt: skip
    named: list[tuple[str, tuple[int, ...]]] = [
        ("wte.weight", (config.vocab_size, d)),
        ("wpe.weight", (config.max_seq_len, d)),
    ]
    for i in range(config.n_layer):
        named += [(f"h.{i}.{part}", shape) for part, shape in shapes.items()]
    named += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return [common.TensorMap(name, PREFIX + name, shape=shape) for name, shape in named]


def canonical_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """Names with the ``transformer.`` prefix. GPT2Model files and the hub's gpt2 have no
    prefix on any name; a file that prefixes some names keeps the others as they are."""
    if any(name.startswith(PREFIX) for name in tensors):
        return dict(tensors)
    return {(name if name in TIED else PREFIX + name): value for name, value in tensors.items()}


def from_state(hf_config: dict[str, Any], tensors: dict[str, Any], dtype=np.float32):
    """A GPT from a config dict and transformers-named tensors: arrays (e.g. a torch
    state_dict converted to NumPy) or the lazy references ``common.tensor_refs`` reads."""
    dtype = common.float_dtype(dtype)
    config = config_from_hf(hf_config)
    entries = tensor_map(config)
    refs = canonical_names(common.as_refs(tensors))
    where = "GPT-2 checkpoint"
    plan, _ = common.collect_state(refs, entries, tied=TIED, ignore=IGNORED, where=where)
    copies = common.tied_copies(refs, TIED, entries)
    return common.build_and_fill(lambda: model_class()(config), entries, plan, dtype, where, copies)


def load_gpt2(path: str | os.PathLike, dtype=np.float32):
    """Load a transformers GPT-2 folder (config.json + model.safetensors) as a numpyllm GPT,
    in eval mode, with parameters of ``dtype`` (float32 or float64)."""
    dtype = common.float_dtype(dtype)  # before any file is read
    return from_state(common.read_config(path), common.tensor_refs(path), dtype)


def to_state(model) -> dict[str, np.ndarray]:
    """transformers-named tensors of a GPT, as GPT2LMHeadModel stores them."""
    return common.build_checkpoint(model, tensor_map(model.config))


def save_gpt2(model, path: str | os.PathLike, token_ids: dict[str, int] | None = None) -> None:
    """Write ``model`` as a folder that transformers' GPT2LMHeadModel.from_pretrained loads;
    ``token_ids`` (bos_token_id, eos_token_id, pad_token_id) come from its tokenizer."""
    if not isinstance(model, model_class()):
        raise TypeError(f"save_gpt2 expects a numpyllm GPT, got {type(model).__name__}")
    config = config_to_hf(model.config, common.dtype_name(model))
    common.add_token_ids(config, token_ids)
    common.write_checkpoint(path, config, to_state(model))


load = load_gpt2
save = save_gpt2
