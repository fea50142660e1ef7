"""T5 checkpoints (transformers' T5ForConditionalGeneration) <-> numpyllm's T5.

{s} is ``encoder`` or ``decoder``; {n}, the feed-forward sub-layer of a transformers block, is
1 in the encoder and 2 in the decoder (after self-attention 0 and cross-attention 1). T marks a
weight torch's nn.Linear stores (out, in), the transpose of numpyllm's (in, out).

    numpyllm name
        transformers name
    shared.weight
        shared.weight ({s}.embed_tokens.weight are tied copies)
    {s}.relative_attention_bias.weight
        {s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
    {s}.blocks.{i}.self_attn_norm.weight
        {s}.block.{i}.layer.0.layer_norm.weight
    {s}.blocks.{i}.self_attn.{q,k,v,o}_proj.weight
        {s}.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight                        T
    decoder.blocks.{i}.cross_attn_norm.weight
        decoder.block.{i}.layer.1.layer_norm.weight
    decoder.blocks.{i}.cross_attn.{q,k,v,o}_proj.weight
        decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}.weight                  T
    {s}.blocks.{i}.ffn_norm.weight
        {s}.block.{i}.layer.{n}.layer_norm.weight
    {s}.blocks.{i}.ffn.fc_in.weight
        {s}.block.{i}.layer.{n}.DenseReluDense.wi.weight (relu) or wi_0 (gated)     T
    {s}.blocks.{i}.ffn.fc_gate.weight (gated only)
        {s}.block.{i}.layer.{n}.DenseReluDense.wi_1.weight                          T
    {s}.blocks.{i}.ffn.fc_out.weight
        {s}.block.{i}.layer.{n}.DenseReluDense.wo.weight                            T
    {s}.final_norm.weight
        {s}.final_layer_norm.weight
    lm_head.weight (untied models only)
        lm_head.weight                                                              T

The position bias lives in block 0 of each stack only (every block of the stack adds it); old
files also hold an unused one in the decoder's first cross-attention, which is ignored.

The output head. The original T5 ties the head to ``shared`` and multiplies the decoder output
by d_model^-0.5 first; T5 v1.1 / flan-T5 store a separate ``lm_head`` and do not rescale.
config.json says which: ``tie_word_embeddings`` (older transformers) or ``scale_decoder_outputs``
(transformers 5, which then stores tie_word_embeddings as true regardless). numpyllm's T5 has
the same two forms (its ``tie_word_embeddings``). Whether the head is tied is read from the file
(an ``lm_head.weight`` equal to ``shared.weight``, or none, is tied). A tied head without the
rescale (what transformers 5 makes of a fresh ``tie_word_embeddings=False`` model) loads as a
separate copy, with a warning: the numbers are the same, but training updates the copy apart
from the embedding. A separate head with the rescale has no numpyllm form and is an error.

Config translation: num_layers -> n_layer, num_decoder_layers -> n_decoder_layer, num_heads ->
n_head, dropout_rate -> dropout, layer_norm_epsilon -> layer_norm_eps, feed_forward_proj ->
feed_forward ("relu" or "gated-gelu"), initializer_factor -> init_factor; the rest share names.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np

from numpyllm.hf import common

MODEL_TYPE = "t5"
LOADER = "load_t5"
# T5WithLMHeadModel: the first name of T5ForConditionalGeneration, still in some configs
ARCHITECTURES = ("T5ForConditionalGeneration", "T5Model", "T5WithLMHeadModel")
FEED_FORWARD = ("relu", "gated-gelu")
TIED = {
    "encoder.embed_tokens.weight": "shared.weight",
    "decoder.embed_tokens.weight": "shared.weight",
}
LM_HEAD = "lm_head.weight"
IGNORED = (r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",)

UNSUPPORTED = (
    ("feed_forward_proj", "relu", lambda v: v in FEED_FORWARD),
    ("is_encoder_decoder", True, lambda v: v is True),
    ("is_decoder", False, lambda v: v is False),
)


def scales_output(hf: dict[str, Any]) -> bool:
    """Whether transformers multiplies the decoder output by d_model^-0.5 before the head."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def _single_id(hf: dict[str, Any], field: str, default: int) -> int:
    value = hf.get(field, default)
    if isinstance(value, list):  # transformers allows several eos ids; numpyllm stops on one
        if len(value) != 1:
            raise ValueError(
                f"{LOADER}: config.json sets {field}={value!r}; numpyllm's T5 takes a single id"
            )
        value = value[0]
    if value is None:
        raise ValueError(f"{LOADER}: config.json sets {field}=None; numpyllm's T5 needs an id")
    return int(value)


def config_from_hf(hf: dict[str, Any], tied_head: bool = True):
    """A T5Config from a T5 config.json (as a dict), for a head tied or not (read from the file)."""
    from numpyllm.models.t5 import T5Config

    common.check_config(hf, MODEL_TYPE, ARCHITECTURES, UNSUPPORTED, LOADER)
    scaled = scales_output(hf)
    if scaled and not tied_head:
        raise ValueError(
            f"{LOADER}: the checkpoint's lm_head.weight differs from shared.weight while "
            "config.json scales the decoder output by d_model^-0.5 (tie_word_embeddings / "
            "scale_decoder_outputs true); numpyllm's T5 rescales only with a tied head"
        )
    pad = _single_id(hf, "pad_token_id", 0)
    n_layer = hf.get("num_layers", 6)
    return T5Config(
        vocab_size=common.require(hf, "vocab_size", LOADER),
        d_model=hf.get("d_model", 512),
        d_kv=hf.get("d_kv", 64),
        d_ff=hf.get("d_ff", 2048),
        n_layer=n_layer,
        n_decoder_layer=hf.get("num_decoder_layers") or n_layer,
        n_head=hf.get("num_heads", 8),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout=hf.get("dropout_rate", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        feed_forward=hf.get("feed_forward_proj", "relu"),
        tie_word_embeddings=scaled,
        decoder_start_token_id=_single_id(hf, "decoder_start_token_id", pad),
        pad_token_id=pad,
        eos_token_id=_single_id(hf, "eos_token_id", 1),
        init_factor=hf.get("initializer_factor", 1.0),
    )


def config_to_hf(config, dtype: str = "float32") -> dict[str, Any]:
    """The config.json transformers' T5ForConditionalGeneration reads for the same model."""
    if config.feed_forward not in FEED_FORWARD:
        raise ValueError(
            f"save_t5 writes feed_forward {FEED_FORWARD}, the forms transformers and numpyllm "
            f"compute alike and the parity suite checks; got {config.feed_forward!r}"
        )
    tied = bool(config.tie_word_embeddings)
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "num_layers": config.n_layer,
        "num_decoder_layers": config.n_decoder_layer,
        "num_heads": config.n_head,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "feed_forward_proj": config.feed_forward,
        "initializer_factor": config.init_factor,
        # older transformers read the head's form from tie_word_embeddings, version 5 from
        # scale_decoder_outputs (and a stored lm_head.weight unties the head)
        "tie_word_embeddings": tied,
        "scale_decoder_outputs": tied,
        "is_encoder_decoder": True,
        "decoder_start_token_id": config.decoder_start_token_id,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "use_cache": True,
        "dtype": dtype,
    }


def tensor_map(config) -> list[common.TensorMap]:
    """One entry per numpyllm T5 parameter (see the module docstring's table)."""
    T = common.TensorMap
    entries = [T("shared.weight", "shared.weight")]
    ffn = {"fc_in": "wi_0", "fc_gate": "wi_1"} if config.gated else {"fc_in": "wi"}
    ffn["fc_out"] = "wo"
    for stack, n_blocks in (("encoder", config.n_layer), ("decoder", config.n_decoder_layer)):
        entries.append(
            T(f"{stack}.relative_attention_bias.weight",
              f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        )  # fmt: skip
        ffn_layer = 2 if stack == "decoder" else 1
        for i in range(n_blocks):
            ours, hf = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
            sublayers = [("self_attn", f"{hf}0.", "SelfAttention")]
            if stack == "decoder":
                sublayers.append(("cross_attn", f"{hf}1.", "EncDecAttention"))
            for name, layer, attention in sublayers:
                entries.append(T(f"{ours}{name}_norm.weight", f"{layer}layer_norm.weight"))
                for proj in "qkvo":
                    entries.append(
                        T(f"{ours}{name}.{proj}_proj.weight", f"{layer}{attention}.{proj}.weight",
                          transpose=True)
                    )  # fmt: skip
            layer = f"{hf}{ffn_layer}."
            entries.append(T(f"{ours}ffn_norm.weight", f"{layer}layer_norm.weight"))
            for a, b in ffn.items():
                entries.append(
                    T(f"{ours}ffn.{a}.weight", f"{layer}DenseReluDense.{b}.weight", transpose=True)
                )
        entries.append(T(f"{stack}.final_norm.weight", f"{stack}.final_layer_norm.weight"))
    if not config.tie_word_embeddings:
        entries.append(T("lm_head.weight", LM_HEAD, transpose=True))
    return [dataclasses.replace(e, shape=_shape(e.ours, config)) for e in entries]


def _shape(ours: str, config) -> tuple[int, ...]:
    """numpyllm's shape of a T5 parameter, from the config."""
    d, inner, d_ff, V = config.d_model, config.n_head * config.d_kv, config.d_ff, config.vocab_size
    if ours == "shared.weight":
        return (V, d)
    if ours == "lm_head.weight":
        return (d, V)
    if ours.endswith("relative_attention_bias.weight"):
        return (config.relative_attention_num_buckets, config.n_head)
    layer = ours.rsplit(".", 2)[-2]
    linears = {  # (in, out)
        "q_proj": (d, inner), "k_proj": (d, inner), "v_proj": (d, inner), "o_proj": (inner, d),
        "fc_in": (d, d_ff), "fc_gate": (d, d_ff), "fc_out": (d_ff, d),
    }  # fmt: skip
    return linears.get(layer, (d,))  # else an RMS norm weight


def _shared(tensors: dict[str, Any]) -> Any:
    """The embedding's tensor: shared.weight, or one of its tied aliases if only those exist."""
    for name in ("shared.weight", *TIED):
        if name in tensors:
            return tensors[name]
    return None


def _head_is_tied(tensors: dict[str, Any]) -> bool:
    """Whether the file's lm_head.weight is absent or equal to the embedding (read for that)."""
    if LM_HEAD not in tensors:
        return True
    head, shared = tensors[LM_HEAD], _shared(tensors)
    if shared is None or tuple(head.shape) != tuple(shared.shape):
        return False
    return bool(np.array_equal(head.read(), shared.read()))


def model_class() -> Any:
    from numpyllm.models.t5 import T5

    return T5


def from_state(hf_config: dict[str, Any], tensors: dict[str, Any], dtype=np.float32):
    """A T5 from a config dict and transformers-named tensors (arrays, or the lazy references
    ``common.tensor_refs`` reads); the in-memory half of ``load_t5``."""
    dtype = common.float_dtype(dtype)
    refs = common.as_refs(tensors)
    tied_head = _head_is_tied(refs)
    config = config_from_hf(hf_config, tied_head)
    if config.tie_word_embeddings:
        refs.pop(LM_HEAD, None)  # equal to shared.weight (checked above)
    elif tied_head:
        warnings.warn(
            f"{LOADER}: config.json does not rescale the decoder output, so the head loads as "
            "numpyllm's separate lm_head, a copy of shared.weight: the same logits, but "
            "training updates the two apart (transformers keeps them tied)",
            stacklevel=3,
        )
        shared = _shared(refs)
        if shared is not None:
            refs[LM_HEAD] = shared  # (V, d), as torch stores the head
    entries = tensor_map(config)
    where = "T5 checkpoint"
    plan, _ = common.collect_state(refs, entries, tied=TIED, ignore=IGNORED, where=where)
    copies = common.tied_copies(refs, TIED, entries)
    return common.build_and_fill(lambda: model_class()(config), entries, plan, dtype, where, copies)


def load_t5(path: str | os.PathLike, dtype=np.float32):
    """Load a transformers T5 folder (config.json + model.safetensors) as a numpyllm T5, in
    eval mode, with parameters of ``dtype`` (float32 or float64)."""
    dtype = common.float_dtype(dtype)  # before any file is read
    return from_state(common.read_config(path), common.tensor_refs(path), dtype)


def to_state(model) -> dict[str, np.ndarray]:
    """transformers-named tensors of a T5, as T5ForConditionalGeneration stores them."""
    return common.build_checkpoint(model, tensor_map(model.config))


def save_t5(model, path: str | os.PathLike, token_ids: dict[str, int] | None = None) -> None:
    """Write ``model`` as a folder that transformers' T5ForConditionalGeneration.from_pretrained
    loads (its config sets every special-token id, so ``token_ids`` changes nothing)."""
    if not isinstance(model, model_class()):
        raise TypeError(f"save_t5 expects a numpyllm T5, got {type(model).__name__}")
    config = config_to_hf(model.config, common.dtype_name(model))
    common.add_token_ids(config, token_ids)
    common.write_checkpoint(path, config, to_state(model))


load = load_t5
save = save_t5
