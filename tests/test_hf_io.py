"""numpyllm.hf without torch: folders, files, config checks and name handling.

Checkpoints here are written by numpyllm itself (``save_*``) and then edited the way real
files differ: no prefix, extra buffers, legacy names, a missing or extra tensor, an
unsupported config field. The agreement with transformers' numbers is tests/parity's job.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from numpyllm.hf import (
    CheckpointNotFoundError,
    common,
    load_bert,
    load_gpt2,
    load_t5,
    read_tensors,
    save_bert,
    save_gpt2,
    save_t5,
)
from numpyllm.hf import gpt2 as hf_gpt2
from numpyllm.models.bert import BERT, BertConfig
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.models.t5 import T5, T5Config


def small_gpt(seed: int = 0, **overrides) -> GPT:
    config = GPTConfig(**{"vocab_size": 13, "n_layer": 2, "n_head": 2, "d_model": 8,
                          "max_seq_len": 10, **overrides})  # fmt: skip
    model = GPT(config, np.random.default_rng(seed))
    for _, p in model.named_parameters():  # away from zero biases and unit norms
        p.data += np.random.default_rng(seed + 1).normal(0, 0.1, p.shape).astype(p.dtype)
    return model.eval()


def small_bert(seed: int = 0) -> BERT:
    config = BertConfig(vocab_size=17, n_layer=1, n_head=2, d_model=8, d_ff=12, max_seq_len=9,
                        num_labels=3)  # fmt: skip
    return BERT(config, np.random.default_rng(seed)).eval()


def small_t5(seed: int = 0, **overrides) -> T5:
    config = T5Config(**{"vocab_size": 19, "d_model": 8, "d_kv": 2, "d_ff": 10, "n_layer": 1,
                         "n_head": 2, "relative_attention_num_buckets": 8,
                         "relative_attention_max_distance": 16, **overrides})  # fmt: skip
    return T5(config, np.random.default_rng(seed)).eval()


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = edit(load_file(str(path)))
    save_file(tensors, str(path), metadata={"format": "pt"})


def assert_same_parameters(a, b) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_array_equal(pa[name].data, pb[name].data, err_msg=name)


IDS = np.array([[1, 4, 9, 12, 0, 3]])


# ------------------------------------------------------------------------ missing files


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_gpt2(tmp_path / "nowhere")
    # both a FileNotFoundError and a ValueError, like numpyllm's other input errors
    with pytest.raises(FileNotFoundError):
        load_bert(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        load_t5(tmp_path / "nowhere")


def test_missing_config_and_missing_weights(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        load_gpt2(tmp_path)
    save_gpt2(small_gpt(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="model.safetensors"):
        load_gpt2(tmp_path)


class _TouchWhenUnpickled:
    """Unpickling this object creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pytorch_bin_is_refused_without_unpickling(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_TouchWhenUnpickled(marker)))
    with pytest.raises(ValueError, match="pytorch_model.bin") as info:
        load_gpt2(tmp_path)
    assert "save_pretrained" in str(info.value)  # says how to convert
    assert "safe_serialization=True" in str(info.value)
    assert not marker.exists()


def test_corrupt_files_are_value_errors(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        load_gpt2(tmp_path)
    save_gpt2(small_gpt(), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_gpt2(tmp_path)


# ---------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "field, value",
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("scale_attn_weights", False),
        ("add_cross_attention", True),
        ("tie_word_embeddings", False),
    ],
)
def test_unsupported_gpt2_fields_are_named(tmp_path, field, value):
    save_gpt2(small_gpt(), tmp_path)
    edit_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        load_gpt2(tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("position_embedding_type", "relative_key"),
        ("is_decoder", True),
        ("add_cross_attention", True),
        ("hidden_act", "silu"),
    ],
)
def test_unsupported_bert_fields_are_named(tmp_path, field, value):
    save_bert(small_bert(), tmp_path)
    edit_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        load_bert(tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [("feed_forward_proj", "gated-silu"), ("feed_forward_proj", "gelu"), ("is_decoder", True)],
)
def test_unsupported_t5_fields_are_named(tmp_path, field, value):
    save_t5(small_t5(), tmp_path)
    edit_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        load_t5(tmp_path)


def test_unknown_activation_and_wrong_model_type(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    edit_config(tmp_path, activation_function="swish")
    with pytest.raises(ValueError, match="activation_function='swish'"):
        load_gpt2(tmp_path)
    save_gpt2(small_gpt(), tmp_path)
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        load_bert(tmp_path)
    edit_config(tmp_path, architectures=["GPT2ForSequenceClassification"])
    with pytest.raises(ValueError, match="GPT2ForSequenceClassification"):
        load_gpt2(tmp_path)


def test_t5_separate_head_with_rescale_is_refused(tmp_path):
    save_t5(small_t5(tie_word_embeddings=False), tmp_path)
    edit_config(tmp_path, scale_decoder_outputs=True, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        load_t5(tmp_path)


# ------------------------------------------------------------------- names and tensors


def test_gpt2_hub_layout_without_prefix_and_with_mask_buffers(tmp_path):
    """The hub's gpt2 file: no "transformer." prefix, causal-mask buffers per block."""
    model = small_gpt()
    save_gpt2(model, tmp_path)

    def hub_layout(tensors):
        out = {name.removeprefix("transformer."): value for name, value in tensors.items()}
        for i in range(model.config.n_layer):
            out[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 10, 10), np.float32))
            out[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
        return out

    edit_tensors(tmp_path, hub_layout)
    assert not any(k.startswith("transformer.") for k in read_tensors(tmp_path))
    loaded = load_gpt2(tmp_path)
    assert_same_parameters(loaded, model)
    np.testing.assert_array_equal(loaded(IDS).logits, model(IDS).logits)


def test_tied_copy_accepted_when_equal_refused_when_not(tmp_path):
    model = small_gpt()
    save_gpt2(model, tmp_path)
    edit_tensors(tmp_path, lambda t: {**t, "lm_head.weight": t["transformer.wte.weight"]})
    assert_same_parameters(load_gpt2(tmp_path), model)
    edit_tensors(tmp_path, lambda t: {**t, "lm_head.weight": t["lm_head.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        load_gpt2(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    edit_tensors(tmp_path, lambda t: {k: v for k, v in t.items() if "h.1.mlp.c_fc.bias" not in k})
    with pytest.raises(ValueError, match=r"missing tensors: transformer\.h\.1\.mlp\.c_fc\.bias"):
        load_gpt2(tmp_path)
    save_gpt2(small_gpt(), tmp_path)
    edit_tensors(tmp_path, lambda t: {**t, "score.weight": np.zeros((2, 8), np.float32)})
    with pytest.raises(ValueError, match=r"does not know: score\.weight"):
        load_gpt2(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    edit_config(tmp_path, n_positions=12)  # the file's wpe has 10 rows
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight has shape \(10, 8\)"):
        load_gpt2(tmp_path)


def test_bert_legacy_names_prefixless_files_and_heads(tmp_path):
    model = small_bert()
    save_bert(model, tmp_path, architecture="BertModel")
    tensors = read_tensors(tmp_path)
    assert all(not k.startswith("bert.") for k in tensors)  # BertModel's own names
    assert "pooler.dense.weight" in tensors

    def legacy(t):  # TensorFlow-era LayerNorm names, plus the position_ids buffer
        out = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in t.items()}  # fmt: skip
        out["embeddings.position_ids"] = np.arange(9, dtype=np.int64)[None]
        return out

    edit_tensors(tmp_path, legacy)
    with pytest.warns(UserWarning, match="no classifier, mlm weights"):
        loaded = load_bert(tmp_path)
    ours, back = dict(model.named_parameters()), dict(loaded.named_parameters())
    for name in ours:
        if not name.startswith(("mlm", "classifier")):
            np.testing.assert_array_equal(back[name].data, ours[name].data, err_msg=name)
    out, ref = loaded(IDS, head="mlm"), model(IDS, head="mlm")
    np.testing.assert_array_equal(out.hidden_states, ref.hidden_states)
    np.testing.assert_array_equal(out.pooler_output, ref.pooler_output)


def test_bert_pretraining_file_ignores_the_next_sentence_head(tmp_path):
    model = small_bert()
    save_bert(model, tmp_path)
    edit_tensors(tmp_path, lambda t: {**t, "cls.seq_relationship.weight": np.ones((2, 8), "f4"),
                                      "cls.seq_relationship.bias": np.ones(2, "f4")})  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        loaded = load_bert(tmp_path)
    assert any("next-sentence" in str(w.message) for w in caught)
    np.testing.assert_array_equal(loaded(IDS).logits, model(IDS).logits)


def test_bert_partial_head_is_missing_tensors(tmp_path):
    save_bert(small_bert(), tmp_path)
    edit_tensors(tmp_path, lambda t: {k: v for k, v in t.items() if k != "cls.predictions.bias"})
    with pytest.raises(ValueError, match=r"missing tensors: cls\.predictions\.bias"):
        load_bert(tmp_path)


def test_bert_save_rejects_unknown_architecture(tmp_path):
    with pytest.raises(ValueError, match="BertForPreTraining"):
        save_bert(small_bert(), tmp_path, architecture="BertForPreTraining")


def test_t5_old_files_repeat_embeddings_and_carry_an_unused_bias(tmp_path):
    model = small_t5()
    save_t5(model, tmp_path)
    extra = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"

    def old_layout(t):
        return {**t, "encoder.embed_tokens.weight": t["shared.weight"],
                "decoder.embed_tokens.weight": t["shared.weight"],
                "lm_head.weight": t["shared.weight"], extra: np.zeros((8, 2), "f4")}  # fmt: skip

    edit_tensors(tmp_path, old_layout)
    loaded = load_t5(tmp_path)
    assert_same_parameters(loaded, model)


# ------------------------------------------------------------------- files and dtypes


@settings(max_examples=10)
@given(dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 1000))
def test_save_load_round_trip_is_exact(tmp_path_factory, dtype, seed):
    folder = tmp_path_factory.mktemp("gpt")
    model = small_gpt(seed)
    model.astype(dtype)
    save_gpt2(model, folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == np.dtype(dtype).name
    loaded = load_gpt2(folder, dtype=dtype)
    assert loaded.dtype == dtype
    assert_same_parameters(loaded, model)


def test_float16_and_bfloat16_files_load_widened(tmp_path):
    model = small_gpt()
    save_gpt2(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    half = {k: v.astype(np.float16) for k, v in tensors.items()}
    save_file(half, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_gpt2(tmp_path)
    np.testing.assert_array_equal(loaded.wte.weight.data, half["transformer.wte.weight"])

    # bfloat16 by hand (NumPy has no such dtype): the top 16 bits of each float32, written
    # with the safetensors layout (8-byte header length, JSON header, raw data)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        bits = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(bits)]}  # fmt: skip
        blobs.append(bits)
        offset += len(bits)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    (tmp_path / "model.safetensors").write_bytes(
        len(head).to_bytes(8, "little") + head + b"".join(blobs)
    )
    loaded = load_gpt2(tmp_path)
    truncated = (tensors["transformer.wte.weight"].view(np.uint32) & 0xFFFF0000).view(np.float32)
    np.testing.assert_array_equal(loaded.wte.weight.data, truncated)


def test_sharded_checkpoint_is_read(tmp_path):
    model = small_gpt()
    save_gpt2(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}  # fmt: skip
    weight_map = {}
    for shard, members in shards.items():
        save_file({k: tensors[k] for k in members}, str(tmp_path / shard))
        weight_map.update({k: shard for k in members})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_parameters(load_gpt2(tmp_path), model)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous files untouched and no temp files."""
    first = small_gpt(0)
    save_gpt2(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_write(filename, tensors, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("numpyllm.hf.tensor_file.write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_gpt2(small_gpt(1), tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
    assert_same_parameters(load_gpt2(tmp_path), first)


def test_save_to_a_file_path_and_wrong_model_type(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_gpt2(small_gpt(), file)
    with pytest.raises(TypeError, match="numpyllm GPT"):
        save_gpt2(small_bert(), tmp_path)
    with pytest.raises(TypeError, match="float32 or float64"):
        load_gpt2(tmp_path, dtype=np.float16)


def test_tensor_maps_cover_every_parameter_once():
    """Each mapping lists every numpyllm parameter exactly once and no transformers name twice
    (the parity tests also check the transformers side against torch)."""
    from numpyllm.hf import bert as hf_bert
    from numpyllm.hf import t5 as hf_t5

    for model, mapping in [
        (small_gpt(), hf_gpt2.tensor_map),
        (small_bert(), hf_bert.tensor_map),
        (small_t5(), hf_t5.tensor_map),
        (small_t5(tie_word_embeddings=False, feed_forward="gated-gelu"), hf_t5.tensor_map),
    ]:
        entries = mapping(model.config)
        ours = [e.ours for e in entries]
        assert sorted(ours) == sorted(name for name, _ in model.named_parameters())
        assert len({e.hf for e in entries}) == len(entries)


def test_no_temp_files_left_after_saves(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    save_gpt2(small_gpt(2), tmp_path)  # overwrites in place
    assert sorted(os.listdir(tmp_path)) == sorted(
        [common.CONFIG_FILE, common.GENERATION_CONFIG_FILE, common.WEIGHTS_FILE]
    )
    assert_same_parameters(load_gpt2(tmp_path), small_gpt(2))


# ------------------------------------------------------------------------- lean loading


def test_a_config_bomb_is_refused_before_any_allocation(tmp_path, monkeypatch):
    """n_embd = 2**20 would need terabytes: the headers disagree, so nothing is allocated."""
    save_gpt2(small_gpt(), tmp_path)
    edit_config(tmp_path, n_embd=2**20, n_head=2)

    def no_allocation(*args, **kwargs):
        raise AssertionError("the model was built before the checks")

    monkeypatch.setattr(hf_gpt2, "model_class", no_allocation)
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight has shape \(13, 8\)"):
        load_gpt2(tmp_path)


def test_a_model_bigger_than_the_free_memory_is_refused(tmp_path, monkeypatch):
    save_gpt2(small_gpt(), tmp_path)
    monkeypatch.setattr(common, "available_memory", lambda: 1000)  # bytes
    with pytest.raises(ValueError, match=r"need .* GiB as float32, but only .* available"):
        load_gpt2(tmp_path)


def test_a_header_claiming_more_than_the_file_holds_is_refused(tmp_path):
    save_gpt2(small_gpt(), tmp_path)
    file = tmp_path / "model.safetensors"
    data = bytearray(file.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["transformer.wte.weight"]["shape"] = [2**30, 2**20]  # 4 PiB, in a few KiB of file
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
    with pytest.raises(ValueError, match="corrupted or truncated.*transformer.wte.weight"):
        load_gpt2(tmp_path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loading_draws_no_random_weights_and_builds_in_the_target_dtype(tmp_path, monkeypatch,
                                                                         dtype):  # fmt: skip
    from numpyllm.nn import init

    model = small_gpt()
    save_gpt2(model, tmp_path)
    seen = []
    real = init.normal

    def spy(rng, shape, std, param_dtype):
        seen.append(init._UNINITIALISED.get())
        return real(rng, shape, std, param_dtype)

    monkeypatch.setattr(init, "normal", spy)
    loaded = load_gpt2(tmp_path, dtype=dtype)
    assert seen and all(d == np.dtype(dtype) for d in seen)  # allocated, never drawn
    assert all(p.data.dtype == dtype for p in loaded.parameters())
    assert_same_parameters(loaded.astype(np.float32), model)
