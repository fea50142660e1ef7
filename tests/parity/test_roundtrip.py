"""Checkpoint files both ways, through transformers' own ``from_pretrained`` / ``save_pretrained``.

numpyllm -> transformers: a random numpyllm model with perturbed weights is written with
``save_*``; transformers' class loads the folder and gives the same outputs, and numpyllm reads
it back bit for bit. transformers -> numpyllm: a random transformers model with perturbed
weights is written with ``save_pretrained`` (safetensors) and ``load_*`` gives its outputs.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyllm.hf import load_bert, load_gpt2, load_t5, save_bert, save_gpt2, save_t5
from tests.parity.conftest import (
    FLOAT32,
    SKIP_TORCH,
    SKIP_TRANSFORMERS,
    assert_close,
    perturb_numpy,
    perturb_torch,
    to_numpy,
)

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)

ATOL = FLOAT32.logits_atol


def quiet_from_pretrained(cls, folder):
    """transformers' from_pretrained with eager attention, its info messages silenced."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return cls.from_pretrained(folder, attn_implementation="eager").eval()
    finally:
        transformers.logging.set_verbosity(verbosity)


def assert_same_parameters(a, b) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert pa[name].data.dtype == pb[name].data.dtype, name
        np.testing.assert_array_equal(pa[name].data, pb[name].data, err_msg=name)


def read_json(folder) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def ids_array(rng: np.random.Generator, vocab: int, shape) -> np.ndarray:
    return rng.integers(0, vocab, size=shape)


# ---------------------------------------------------------------------------------- GPT-2


@settings(max_examples=5)
@given(
    n_head=st.integers(1, 3), head_dim=st.integers(2, 4), n_layer=st.integers(1, 2),
    vocab=st.integers(3, 30), activation=st.sampled_from(["gelu_new", "gelu", "relu"]),
    seed=st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_gpt_saved_by_numpyllm_runs_in_transformers(n_head, head_dim, n_layer, vocab,
                                                    activation, seed):  # fmt: skip
    from numpyllm.models.gpt import GPT, GPTConfig

    rng = np.random.default_rng(seed)
    config = GPTConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head,
                       d_model=n_head * head_dim, max_seq_len=8, activation=activation)  # fmt: skip
    ours = GPT(config, rng).eval()
    perturb_numpy(ours, rng)
    ids = ids_array(rng, vocab, (2, 6))
    with tempfile.TemporaryDirectory() as folder:
        save_gpt2(ours, folder)
        saved = read_json(folder)
        assert saved["architectures"] == ["GPT2LMHeadModel"] and saved["model_type"] == "gpt2"
        theirs = quiet_from_pretrained(transformers.GPT2LMHeadModel, folder)
        expected = to_numpy(theirs(torch.from_numpy(ids)).logits)
        assert_close(ours(ids).logits, expected, ATOL, "logits")
        assert_same_parameters(load_gpt2(folder), ours)


@pytest.mark.parametrize("cls_name", ["GPT2LMHeadModel", "GPT2Model"])
def test_gpt2_saved_by_transformers_loads(tmp_path, cls_name):
    config = transformers.GPT2Config(
        vocab_size=23, n_layer=2, n_head=2, n_embd=8, n_positions=10, bos_token_id=None,
        eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(config).eval()
    perturb_torch(lm, 0)
    model = lm if cls_name == "GPT2LMHeadModel" else lm.transformer
    model.save_pretrained(tmp_path)  # GPT2Model's files have no "transformer." prefix
    ids = np.array([[4, 8, 15, 16, 22, 4], [1, 2, 3, 4, 5, 6]])
    expected = to_numpy(lm(torch.from_numpy(ids)).logits)
    assert_close(load_gpt2(tmp_path)(ids).logits, expected, ATOL, "logits")


# ----------------------------------------------------------------------------------- BERT

BERT_ARCHITECTURES = ["BertForMaskedLM", "BertForSequenceClassification", "BertModel"]


def bert_outputs_torch(model, ids, types, mask) -> dict[str, np.ndarray]:
    inputs = dict(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                  attention_mask=torch.from_numpy(mask))  # fmt: skip
    out = model(**inputs)
    if isinstance(model, transformers.BertModel):
        return {"hidden": to_numpy(out.last_hidden_state), "pooled": to_numpy(out.pooler_output)}
    if isinstance(model, transformers.BertForMaskedLM):
        return {"mlm": to_numpy(out.logits)}
    base = model.bert(**inputs)
    return {"cls": to_numpy(out.logits), "pooled": to_numpy(base.pooler_output)}


def bert_outputs_ours(model, ids, types, mask) -> dict[str, np.ndarray]:
    mlm = model(ids, attention_mask=mask, token_type_ids=types, head="mlm")
    cls = model(ids, attention_mask=mask, token_type_ids=types, head="classification")
    return {"hidden": mlm.hidden_states, "pooled": mlm.pooler_output, "mlm": mlm.logits,
            "cls": cls.logits}  # fmt: skip


def bert_batch(rng, vocab):
    ids = ids_array(rng, vocab, (2, 7))
    types = rng.integers(0, 2, size=(2, 7))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 4:] = 0
    return ids, types, mask


@pytest.mark.parametrize("architecture", BERT_ARCHITECTURES)
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_bert_saved_by_numpyllm_runs_in_transformers(tmp_path, architecture, activation):
    from numpyllm.models.bert import BERT, BertConfig

    rng = np.random.default_rng(1)
    config = BertConfig(vocab_size=29, n_layer=2, n_head=2, d_model=8, d_ff=12, max_seq_len=9,
                        num_labels=3, activation=activation)  # fmt: skip
    ours = BERT(config, rng).eval()
    perturb_numpy(ours, rng)
    save_bert(ours, tmp_path, architecture=architecture)
    saved = read_json(tmp_path)
    assert saved["architectures"] == [architecture] and saved["model_type"] == "bert"
    theirs = quiet_from_pretrained(getattr(transformers, architecture), tmp_path)
    ids, types, mask = bert_batch(rng, config.vocab_size)
    expected = bert_outputs_torch(theirs, ids, types, mask)
    got = bert_outputs_ours(ours, ids, types, mask)
    for key, value in expected.items():
        assert_close(got[key], value, ATOL, f"{architecture} {key}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heads this class lacks keep their init
        back = load_bert(tmp_path)
    kept = dict(back.named_parameters())
    for name, p in ours.named_parameters():  # everything the file holds comes back exactly
        if any(name.startswith(g) for g in ("pooler", "mlm", "classifier")):
            continue
        np.testing.assert_array_equal(kept[name].data, p.data, err_msg=name)


@pytest.mark.parametrize("architecture", BERT_ARCHITECTURES)
def test_bert_saved_by_transformers_loads(tmp_path, architecture):
    config = transformers.BertConfig(vocab_size=31, num_hidden_layers=2, num_attention_heads=2,
                                     hidden_size=8, intermediate_size=12,
                                     max_position_embeddings=9, num_labels=2)  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(2)
    theirs = getattr(transformers, architecture)(config).eval()
    perturb_torch(theirs, 2)
    theirs.save_pretrained(tmp_path)
    ids, types, mask = bert_batch(np.random.default_rng(2), config.vocab_size)
    expected = bert_outputs_torch(theirs, ids, types, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_bert(tmp_path)
    got = bert_outputs_ours(ours, ids, types, mask)
    for key, value in expected.items():
        assert_close(got[key], value, ATOL, f"{architecture} {key}")


# ------------------------------------------------------------------------------------- T5


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_t5_saved_by_numpyllm_runs_in_transformers(tmp_path, tied, feed_forward):
    from numpyllm.models.t5 import T5, T5Config

    rng = np.random.default_rng(3)
    config = T5Config(vocab_size=27, d_model=8, d_kv=3, d_ff=10, n_layer=2, n_decoder_layer=1,
                      n_head=2, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, feed_forward=feed_forward,
                      tie_word_embeddings=tied)  # fmt: skip
    ours = T5(config, rng).eval()
    perturb_numpy(ours, rng)
    save_t5(ours, tmp_path)
    saved = read_json(tmp_path)
    assert saved["architectures"] == ["T5ForConditionalGeneration"]
    assert saved["model_type"] == "t5"
    theirs = quiet_from_pretrained(transformers.T5ForConditionalGeneration, tmp_path)
    ids, mask = ids_array(rng, 27, (2, 6)), np.array([[1] * 6, [1] * 3 + [0] * 3])
    dec = ids_array(rng, 27, (2, 4))
    ref = theirs(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 decoder_input_ids=torch.from_numpy(dec))  # fmt: skip
    out = ours(ids, attention_mask=mask, decoder_input_ids=dec)
    assert_close(out.encoder_hidden_states, to_numpy(ref.encoder_last_hidden_state), ATOL, "enc")
    assert_close(out.logits, to_numpy(ref.logits), ATOL, "logits")
    assert_same_parameters(load_t5(tmp_path), ours)


@pytest.mark.parametrize("head", ["tied", "separate", "tied-unscaled"])
def test_t5_saved_by_transformers_loads(tmp_path, head):
    """tied: the original T5; separate: T5 v1.1's own lm_head; tied-unscaled: what
    transformers 5 makes of a fresh ``tie_word_embeddings=False`` model (the head is the
    embedding, but the output is not rescaled), loaded as a copy with a warning."""
    config = transformers.T5Config(vocab_size=25, d_model=8, d_kv=2, d_ff=10, num_layers=1,
                                   num_decoder_layers=2, num_heads=2,
                                   relative_attention_num_buckets=8,
                                   relative_attention_max_distance=16,
                                   feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                                   tie_word_embeddings=head == "tied")  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(4)
    theirs = transformers.T5ForConditionalGeneration(config).eval()
    if head == "separate":
        theirs.lm_head.weight = torch.nn.Parameter(theirs.shared.weight.detach().clone())
    elif head == "tied-unscaled" and theirs.lm_head.weight is not theirs.shared.weight:
        pytest.skip("this transformers version unties the head of a tie_word_embeddings=False T5")
    perturb_torch(theirs, 4)
    theirs.save_pretrained(tmp_path)
    ids, dec = np.array([[5, 9, 2, 24, 1]]), np.array([[0, 7, 3]])
    expected = to_numpy(
        theirs(input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(dec)).logits
    )
    if head == "tied-unscaled":
        with pytest.warns(UserWarning, match="copy of shared.weight"):
            ours = load_t5(tmp_path)
    else:
        ours = load_t5(tmp_path)
    assert ours.config.tie_word_embeddings == (head == "tied")
    assert_close(ours(ids, decoder_input_ids=dec).logits, expected, ATOL, "logits")
