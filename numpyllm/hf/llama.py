"""Llama-family checkpoints (transformers' LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM) <-> numpyllm's Llama.

numpyllm's Llama names its parameters as transformers does, so the mapping is the identity
on names; every projection weight is stored transposed (torch's Linear keeps (out, in),
numpyllm's (in, out)):

    numpyllm = transformers                                      shape (numpyllm)
    model.embed_tokens.weight                                    (V, d)
    model.layers.{i}.input_layernorm.weight                      (d,)
    model.layers.{i}.self_attn.q_proj.weight             T       (d, H dh)
    model.layers.{i}.self_attn.{k,v}_proj.weight         T       (d, H_kv dh)
    model.layers.{i}.self_attn.{q,k,v}_proj.bias                 Qwen2 only
    model.layers.{i}.self_attn.o_proj.weight             T       (H dh, d)
    model.layers.{i}.post_attention_layernorm.weight             (d,)
    model.layers.{i}.mlp.{gate,up}_proj.weight           T       (d, d_ff)
    model.layers.{i}.mlp.down_proj.weight                T       (d_ff, d)
    model.norm.weight                                            (d,)
    lm_head.weight                                       T       (d, V); absent when tied

Config translation: hidden_size -> d_model, num_hidden_layers -> n_layer,
num_attention_heads -> n_head, num_key_value_heads -> n_kv_head, intermediate_size -> d_ff,
max_position_embeddings -> max_seq_len, rope_theta (or rope_parameters["rope_theta"]) ->
rope_theta, initializer_range -> init_std; rms_norm_eps, tie_word_embeddings and
sliding_window (Mistral) keep their names; Qwen2 always has q/k/v biases (attention_bias).

Refused, with the setting named: a rope scaling other than the default (linear, dynamic,
yarn, llama3, ...), an activation other than silu, MLP biases, Llama's attention_bias (it
also biases o_proj), a head_dim other than hidden_size / num_attention_heads, and Qwen2's
sliding-window layers. A Mistral sliding_window is kept: the model refuses sequences longer
than it (full attention equals windowed attention only up to the window).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from numpyllm.hf import common

MODEL_TYPE = "llama"
#: model_type -> the transformers class whose folders are read (and written, for these types)
CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
           "qwen2": "Qwen2ForCausalLM"}  # fmt: skip
ARCHITECTURES = tuple(CLASSES.values())
TIED = {"lm_head.weight": "model.embed_tokens.weight"}
IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)  # old files saved it
LOADER = "load_llama"

UNSUPPORTED = (
    ("hidden_act", "silu", lambda v: v == "silu"),
    ("mlp_bias", False, lambda v: v is False),
    ("use_sliding_window", False, lambda v: v is False),  # Qwen2's per-layer windows
)


def _rope_theta(hf: dict[str, Any]) -> float:
    """rope_theta from either layout (transformers >= 5 nests it in rope_parameters), after
    refusing any rope scaling numpyllm does not compute."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for where, entry in (("rope_parameters", params), ("rope_scaling", scaling)):
        kind = entry.get("rope_type", entry.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"{LOADER}: config.json sets {where} with rope_type {kind!r}, which numpyllm "
                "does not implement (it computes the default rotary embedding only)"
            )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any]):
    """A LlamaConfig from a Llama, Mistral or Qwen2 config.json (as a dict)."""
    from numpyllm.models.llama import LlamaConfig

    model_type = hf.get("model_type", "llama")
    if model_type not in CLASSES:
        raise ValueError(
            f"{LOADER} reads model_type {', '.join(map(repr, CLASSES))} checkpoints, but "
            f"config.json says model_type {model_type!r}"
        )
    common.check_architectures(hf, [CLASSES[model_type]], LOADER)
    common.reject_unsupported(hf, UNSUPPORTED, LOADER)
    if model_type == "llama" and hf.get("attention_bias", False):
        raise ValueError(
            f"{LOADER}: config.json sets attention_bias=True, which in Llama also biases "
            "o_proj; numpyllm's Llama has q/k/v biases only (Qwen2's layout)"
        )
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ValueError(f"{LOADER}: config.json sets layer_types {sorted(layer_types)}, which "
                         "numpyllm does not support (full attention only)")  # fmt: skip
    d, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * heads != d:
        raise ValueError(
            f"{LOADER}: config.json sets head_dim={head_dim}, but numpyllm's heads have "
            f"hidden_size / num_attention_heads = {d // heads} features"
        )
    window = hf.get("sliding_window") if model_type == "mistral" else None
    return LlamaConfig(
        vocab_size=common.require(hf, "vocab_size", LOADER),
        n_layer=hf.get("num_hidden_layers", 32),
        n_head=heads,
        d_model=d,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        n_kv_head=hf.get("num_key_value_heads") or heads,
        d_ff=hf.get("intermediate_size", 11008),
        rope_theta=_rope_theta(hf),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=model_type == "qwen2",
        init_std=hf.get("initializer_range", 0.02),
        sliding_window=window,
    )


def config_to_hf(config, dtype: str = "float32") -> dict[str, Any]:
    """The config.json transformers reads for the same model: LlamaForCausalLM, or
    Qwen2ForCausalLM with attention_bias, or MistralForCausalLM with a sliding_window."""
    model_type = "qwen2" if config.attention_bias else "llama"
    if config.sliding_window is not None:
        if config.attention_bias:
            raise ValueError("save_llama: no transformers class has both q/k/v biases and a "
                             "sliding window")  # fmt: skip
        model_type = "mistral"
    hf = {
        "architectures": [CLASSES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "intermediate_size": config.d_ff,
        "max_position_embeddings": config.max_seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": dtype,
    }
    if model_type == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    elif model_type == "mistral":
        hf["sliding_window"] = config.sliding_window
    else:
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


def model_class() -> Any:
    from numpyllm.models.llama import Llama

    return Llama


def tensor_map(config) -> list[common.TensorMap]:
    """One entry per numpyllm Llama parameter (see the module docstring's table), with its
    shape in numpyllm's layout."""
    d, f, V = config.d_model, config.d_ff, config.vocab_size
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    entries = [common.TensorMap("model.embed_tokens.weight", "model.embed_tokens.weight",
                                shape=(V, d))]  # fmt: skip
    for i in range(config.n_layer):
        layer = f"model.layers.{i}."
        named: list[tuple[str, bool, tuple[int, ...]]] = [("input_layernorm.weight", False, (d,))]
        for proj, width in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            named.append((f"self_attn.{proj}.weight", True, (d, width)))
            if config.attention_bias:
                named.append((f"self_attn.{proj}.bias", False, (width,)))
        named += [("self_attn.o_proj.weight", True, (q, d)),
                  ("post_attention_layernorm.weight", False, (d,)),
                  ("mlp.gate_proj.weight", True, (d, f)), ("mlp.up_proj.weight", True, (d, f)),
                  ("mlp.down_proj.weight", True, (f, d))]  # fmt: skip
        entries += [common.TensorMap(layer + n, layer + n, transpose=t, shape=shape)
                    for n, t, shape in named]  # fmt: skip
    entries.append(common.TensorMap("model.norm.weight", "model.norm.weight", shape=(d,)))
    if not config.tie_word_embeddings:
        entries.append(common.TensorMap("lm_head.weight", "lm_head.weight", transpose=True,
                                        shape=(d, V)))  # fmt: skip
    return entries


def from_state(hf_config: dict[str, Any], tensors: dict[str, Any], dtype=np.float32):
    """A Llama from a config dict and transformers-named tensors: arrays (e.g. a torch
    state_dict converted to NumPy) or the lazy references ``common.tensor_refs`` reads."""
    dtype = common.float_dtype(dtype)
    config = config_from_hf(hf_config)
    entries = tensor_map(config)
    refs = common.as_refs(tensors)
    tied = TIED if config.tie_word_embeddings else None
    where = f"{CLASSES[hf_config.get('model_type', 'llama')]} checkpoint"
    plan, _ = common.collect_state(refs, entries, tied=tied, ignore=IGNORED, where=where)
    copies = common.tied_copies(refs, tied, entries)
    return common.build_and_fill(lambda: model_class()(config), entries, plan, dtype, where, copies)


def load_llama(path: str | os.PathLike, dtype=np.float32):
    """Load a transformers Llama / Mistral / Qwen2 causal-LM folder (config.json and
    model.safetensors, or shards listed in model.safetensors.index.json) as a numpyllm
    Llama, in eval mode, with parameters of ``dtype`` (float32 or float64)."""
    dtype = common.float_dtype(dtype)  # before any file is read
    return from_state(common.read_config(path), common.tensor_refs(path), dtype)


def to_state(model) -> dict[str, np.ndarray]:
    """transformers-named tensors of a Llama, in transformers' layouts."""
    return common.build_checkpoint(model, tensor_map(model.config))


def save_llama(model, path: str | os.PathLike, token_ids: dict[str, int] | None = None) -> None:
    """Write ``model`` as a folder that transformers' LlamaForCausalLM (Qwen2ForCausalLM
    with attention_bias, MistralForCausalLM with a sliding_window) loads; ``token_ids``
    (bos_token_id, eos_token_id, pad_token_id) come from its tokenizer."""
    if not isinstance(model, model_class()):
        raise TypeError(f"save_llama expects a numpyllm Llama, got {type(model).__name__}")
    config = config_to_hf(model.config, common.dtype_name(model))
    common.add_token_ids(config, token_ids)
    common.write_checkpoint(path, config, to_state(model))


load = load_llama
save = save_llama
