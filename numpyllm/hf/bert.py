"""BERT checkpoints (transformers' BertForMaskedLM / BertForSequenceClassification / BertModel)
<-> numpyllm's BERT.

torch's nn.Linear stores its weight (out, in) and numpyllm's Linear (in, out), so every dense
weight is transposed on the way in and out (marked T below); embedding tables, biases and
LayerNorm parameters are copied as they are.

  numpyllm                           transformers                                        group
  embeddings.{X}_embeddings.weight   bert.embeddings.{X}_embeddings.weight               model
  embeddings.layer_norm.{w,b}        bert.embeddings.LayerNorm.{w,b}                     model
  encoder.{i}.attention.q_proj.{w,b} bert.encoder.layer.{i}.attention.self.query       T model
  encoder.{i}.attention.k_proj.{w,b} bert.encoder.layer.{i}.attention.self.key         T model
  encoder.{i}.attention.v_proj.{w,b} bert.encoder.layer.{i}.attention.self.value       T model
  encoder.{i}.attention.o_proj.{w,b} bert.encoder.layer.{i}.attention.output.dense     T model
  encoder.{i}.attention_norm.{w,b}   bert.encoder.layer.{i}.attention.output.LayerNorm   model
  encoder.{i}.ffn.fc_in.{w,b}        bert.encoder.layer.{i}.intermediate.dense         T model
  encoder.{i}.ffn.fc_out.{w,b}       bert.encoder.layer.{i}.output.dense               T model
  encoder.{i}.ffn_norm.{w,b}         bert.encoder.layer.{i}.output.LayerNorm             model
  pooler.{w,b}                       bert.pooler.dense.{w,b}                           T pooler
  mlm_transform.{w,b}                cls.predictions.transform.dense.{w,b}             T mlm
  mlm_norm.{w,b}                     cls.predictions.transform.LayerNorm.{w,b}           mlm
  mlm_bias                           cls.predictions.bias                                mlm
  classifier.{w,b}                   classifier.{w,b}                                  T classifier
  (tied to word_embeddings)          cls.predictions.decoder.weight                      tied
  (tied to mlm_bias)                 cls.predictions.decoder.bias                        tied
  ({X} is word, position or token_type; {w,b} stands for {weight,bias}.)

numpyllm's BERT carries every head at once; a checkpoint carries those of its class (a masked-LM
file has no pooler and no classifier). A head absent from the file keeps numpyllm's random
initialisation, with a warning naming it; a head present only in part is an error. Files from
BertModel have no ``bert.`` prefix; old files name LayerNorm parameters ``gamma`` / ``beta``;
the ``position_ids`` / ``token_type_ids`` buffers are ignored, and so is BertForPreTraining's
next-sentence head ``cls.seq_relationship`` (numpyllm has none), with a warning.

Config translation: hidden_size -> d_model, num_hidden_layers -> n_layer, num_attention_heads ->
n_head, intermediate_size -> d_ff, max_position_embeddings -> max_seq_len, hidden_act ->
activation, hidden_dropout_prob -> dropout, the number of labels in id2label -> num_labels.
numpyllm's BERT has no dropout on attention probabilities (a saved config says 0) and one rate
for the classifier input: both only change training-time randomness.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from typing import Any

import numpy as np

from numpyllm.hf import common

MODEL_TYPE = "bert"
LOADER = "load_bert"
PREFIX = "bert."
HEAD_PREFIXES = ("cls.", "classifier.")
TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
IGNORED = (r"bert\.embeddings\.(position_ids|token_type_ids)",)
NSP_HEAD = re.compile(r"cls\.seq_relationship\.(weight|bias)")
OPTIONAL_GROUPS = ("pooler", "mlm", "classifier")
# architecture -> the groups of tensors its checkpoint holds
ARCHITECTURE_GROUPS = {
    "BertForMaskedLM": ("model", "mlm"),
    "BertForSequenceClassification": ("model", "pooler", "classifier"),
    "BertModel": ("model", "pooler"),
}
READABLE = (*ARCHITECTURE_GROUPS, "BertForPreTraining")
ARCHITECTURES = READABLE
ACTIVATION_TO_HF = {"gelu_tanh": "gelu_new"}

UNSUPPORTED = (
    ("position_embedding_type", "absolute", lambda v: v == "absolute"),
    ("is_decoder", False, lambda v: v is False),
    ("add_cross_attention", False, lambda v: v is False),
    ("tie_word_embeddings", True, lambda v: v is True),
)


def num_labels_of(hf: dict[str, Any]) -> int:
    """transformers stores the label count as the id2label table (num_labels only when set by
    hand); 2 when neither is there, as in transformers."""
    if "id2label" in hf and hf["id2label"]:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))


def config_from_hf(hf: dict[str, Any]):
    """A BertConfig from a BERT config.json (as a dict)."""
    from numpyllm.models.bert import BertConfig

    common.check_config(hf, MODEL_TYPE, READABLE, UNSUPPORTED, LOADER)
    activation = common.activation(hf, "hidden_act", "gelu", LOADER)
    return BertConfig(
        vocab_size=common.require(hf, "vocab_size", LOADER),
        n_layer=hf.get("num_hidden_layers", 12),
        n_head=hf.get("num_attention_heads", 12),
        d_model=hf.get("hidden_size", 768),
        max_seq_len=hf.get("max_position_embeddings", 512),
        d_ff=hf.get("intermediate_size", 3072),
        type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=activation,
        init_std=hf.get("initializer_range", 0.02),
        num_labels=num_labels_of(hf),
        pad_token_id=hf.get("pad_token_id", 0),
    )


def config_to_hf(config, architecture: str, dtype: str = "float32") -> dict[str, Any]:
    """The config.json transformers' ``architecture`` class reads for the same model."""
    labels = range(config.num_labels)
    return {
        "architectures": [architecture],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.d_ff,
        "hidden_act": ACTIVATION_TO_HF.get(config.activation, config.activation),
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "max_position_embeddings": config.max_seq_len,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.init_std,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "id2label": {str(i): f"LABEL_{i}" for i in labels},
        "label2id": {f"LABEL_{i}": i for i in labels},
        "dtype": dtype,
    }


def tensor_map(config) -> list[common.TensorMap]:
    """One entry per numpyllm BERT parameter (see the module docstring's table)."""
    T = common.TensorMap
    emb = "bert.embeddings."
    entries = [
        T("embeddings.word_embeddings.weight", emb + "word_embeddings.weight"),
        T("embeddings.position_embeddings.weight", emb + "position_embeddings.weight"),
        T("embeddings.token_type_embeddings.weight", emb + "token_type_embeddings.weight"),
        T("embeddings.layer_norm.weight", emb + "LayerNorm.weight"),
        T("embeddings.layer_norm.bias", emb + "LayerNorm.bias"),
    ]
    for i in range(config.n_layer):
        ours, hf = f"encoder.{i}.", f"bert.encoder.layer.{i}."
        dense = {
            "attention.q_proj": "attention.self.query",
            "attention.k_proj": "attention.self.key",
            "attention.v_proj": "attention.self.value",
            "attention.o_proj": "attention.output.dense",
            "ffn.fc_in": "intermediate.dense",
            "ffn.fc_out": "output.dense",
        }
        norms = {"attention_norm": "attention.output.LayerNorm", "ffn_norm": "output.LayerNorm"}
        for a, b in dense.items():
            entries += [T(f"{ours}{a}.weight", f"{hf}{b}.weight", transpose=True),
                        T(f"{ours}{a}.bias", f"{hf}{b}.bias")]  # fmt: skip
        for a, b in norms.items():
            entries += [T(f"{ours}{a}.weight", f"{hf}{b}.weight"),
                        T(f"{ours}{a}.bias", f"{hf}{b}.bias")]  # fmt: skip
    head = "cls.predictions."
    entries += [
        T("pooler.weight", "bert.pooler.dense.weight", transpose=True, group="pooler"),
        T("pooler.bias", "bert.pooler.dense.bias", group="pooler"),
        T("mlm_transform.weight", head + "transform.dense.weight", transpose=True, group="mlm"),
        T("mlm_transform.bias", head + "transform.dense.bias", group="mlm"),
        T("mlm_norm.weight", head + "transform.LayerNorm.weight", group="mlm"),
        T("mlm_norm.bias", head + "transform.LayerNorm.bias", group="mlm"),
        T("mlm_bias", head + "bias", group="mlm"),
        T("classifier.weight", "classifier.weight", transpose=True, group="classifier"),
        T("classifier.bias", "classifier.bias", group="classifier"),
    ]
    return [dataclasses.replace(e, shape=_shape(e.ours, config)) for e in entries]


def _shape(ours: str, config) -> tuple[int, ...]:
    """numpyllm's shape of a BERT parameter, from the config."""
    d, d_ff, V = config.d_model, config.d_ff, config.vocab_size
    tables = {
        "word_embeddings": V, "position_embeddings": config.max_seq_len,
        "token_type_embeddings": config.type_vocab_size,
    }  # fmt: skip
    linears = {  # (in, out)
        "q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "o_proj": (d, d),
        "fc_in": (d, d_ff), "fc_out": (d_ff, d), "pooler": (d, d), "mlm_transform": (d, d),
        "classifier": (d, config.num_labels),
    }  # fmt: skip
    if ours == "mlm_bias":
        return (V,)
    module, kind = ours.rsplit(".", 1)
    layer = module.rsplit(".", 1)[-1]
    if layer in tables:
        return (tables[layer], d)
    if layer in linears:
        return linears[layer] if kind == "weight" else linears[layer][1:]
    return (d,)  # LayerNorm weights and biases


def _canonical_name(name: str, add_prefix: bool) -> str:
    if add_prefix and not name.startswith(HEAD_PREFIXES):
        name = PREFIX + name
    if "LayerNorm." in name:  # names from the TensorFlow era
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
    return name


def canonical_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """Names with the ``bert.`` prefix on the encoder's tensors (BertModel files have none)
    and LayerNorm's ``weight`` / ``bias`` for the old ``gamma`` / ``beta``."""
    add_prefix = not any(name.startswith(PREFIX) for name in tensors)
    return {_canonical_name(name, add_prefix): value for name, value in tensors.items()}


def model_class() -> Any:
    from numpyllm.models.bert import BERT

    return BERT


def from_state(hf_config: dict[str, Any], tensors: dict[str, Any], dtype=np.float32):
    """A BERT from a config dict and transformers-named tensors (arrays, or the lazy
    references ``common.tensor_refs`` reads); the in-memory half of ``load_bert``."""
    dtype = common.float_dtype(dtype)
    config = config_from_hf(hf_config)
    refs = canonical_names(common.as_refs(tensors))
    nsp = sorted(name for name in refs if NSP_HEAD.fullmatch(name))
    if nsp:
        warnings.warn(
            f"{LOADER}: ignoring the next-sentence-prediction head ({', '.join(nsp)}): "
            "numpyllm's BERT has none",
            stacklevel=3,
        )
        refs = {k: v for k, v in refs.items() if k not in nsp}
    entries = tensor_map(config)
    where = "BERT checkpoint"
    plan, absent = common.collect_state(
        refs, entries, tied=TIED, ignore=IGNORED, optional_groups=OPTIONAL_GROUPS, where=where
    )
    if absent:
        warnings.warn(
            f"{LOADER}: the checkpoint has no {', '.join(sorted(absent))} weights; those keep "
            "numpyllm's random initialisation",
            stacklevel=3,
        )
    copies = common.tied_copies(refs, TIED, entries)
    return common.build_and_fill(lambda: model_class()(config), entries, plan, dtype, where, copies)


def load_bert(path: str | os.PathLike, dtype=np.float32):
    """Load a transformers BERT folder (config.json + model.safetensors) as a numpyllm BERT,
    in eval mode, with parameters of ``dtype`` (float32 or float64)."""
    dtype = common.float_dtype(dtype)  # before any file is read
    return from_state(common.read_config(path), common.tensor_refs(path), dtype)


def to_state(model, architecture: str = "BertForMaskedLM") -> dict[str, np.ndarray]:
    """transformers-named tensors of a BERT, as ``architecture`` stores them."""
    if architecture not in ARCHITECTURE_GROUPS:
        raise ValueError(
            f"architecture must be one of {', '.join(ARCHITECTURE_GROUPS)}, got {architecture!r}"
        )
    groups = ARCHITECTURE_GROUPS[architecture]
    entries = [e for e in tensor_map(model.config) if e.group in groups]
    state = common.build_checkpoint(model, entries)
    if architecture == "BertModel":  # the base model saves its own names, without "bert."
        state = {name.removeprefix(PREFIX): value for name, value in state.items()}
    return state


def save_bert(
    model,
    path: str | os.PathLike,
    architecture: str = "BertForMaskedLM",
    token_ids: dict[str, int] | None = None,
) -> None:
    """Write ``model`` as a folder that transformers' ``architecture`` class loads with
    ``from_pretrained``: BertForMaskedLM (the default), BertForSequenceClassification or
    BertModel. Only that class's heads are written."""
    if not isinstance(model, model_class()):
        raise TypeError(f"save_bert expects a numpyllm BERT, got {type(model).__name__}")
    state = to_state(model, architecture)
    config = config_to_hf(model.config, architecture, common.dtype_name(model))
    common.add_token_ids(config, token_ids)
    common.write_checkpoint(path, config, state)


def save(model, path: str | os.PathLike, token_ids: dict[str, int] | None = None) -> None:
    """A training checkpoint: every head (pooler, masked-LM head, classifier) under
    transformers' names, so that nothing a resumed run needs is lost. config.json names
    BertForMaskedLM; BertForSequenceClassification and BertModel load the folder too (each
    takes its own heads; transformers notes the others as unused)."""
    if not isinstance(model, model_class()):
        raise TypeError(f"save expects a numpyllm BERT, got {type(model).__name__}")
    config = config_to_hf(model.config, "BertForMaskedLM", common.dtype_name(model))
    common.add_token_ids(config, token_ids)
    common.write_checkpoint(path, config, common.build_checkpoint(model, tensor_map(model.config)))


load = load_bert
