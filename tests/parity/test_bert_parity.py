"""numpyllm's BERT against transformers' BertForMaskedLM and BertForSequenceClassification
(and the BertModel inside it), on random perturbed weights.

Each example draws a small BERT config and a padded batch with token types, builds the
transformers model (eager attention, dropout 0, eval mode), perturbs every parameter, converts
it with numpyllm.hf's BERT mapping and checks hidden states, pooler output, logits, loss and
every parameter's gradient. Attention is bidirectional and every row keeps a real token, so
even padded positions attend to something and are compared too.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from numpyllm.hf import bert as hf_bert
from numpyllm.hf import load_bert
from tests.parity.conftest import (
    PRECISIONS,
    SKIP_TORCH,
    SKIP_TRANSFORMERS,
    assert_close,
    assert_grads_match,
    assert_mapping_exact,
    padding_masks,
    perturb_torch,
    to_numpy,
    torch_state,
)

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)


@st.composite
def bert_cases(draw):
    n_head = draw(st.integers(1, 3))
    seq_len = draw(st.integers(1, 8))
    vocab = draw(st.integers(3, 40))
    type_vocab = draw(st.integers(1, 3))
    cfg = dict(
        vocab_size=vocab,
        num_hidden_layers=draw(st.integers(1, 2)),
        num_attention_heads=n_head,
        hidden_size=n_head * draw(st.integers(-(-4 // n_head), 4)),  # >= 4, see GPT-2's test
        intermediate_size=draw(st.integers(1, 12)),
        max_position_embeddings=seq_len + draw(st.integers(0, 4)),
        type_vocab_size=type_vocab,
        hidden_act=draw(st.sampled_from(["gelu", "gelu_new", "relu"])),
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-5])),
        pad_token_id=draw(st.sampled_from([0, None])),
        num_labels=draw(st.integers(1, 3)),
    )
    batch = draw(st.integers(1, 3))
    shape = (batch, seq_len)
    n = batch * seq_len
    ids = np.array(draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)))
    types = np.array(draw(st.lists(st.integers(0, type_vocab - 1), min_size=n, max_size=n)))
    mask = padding_masks(draw, st, batch, seq_len)
    scored = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(shape)
    seed = draw(st.integers(0, 2**31 - 1))
    return cfg, ids.reshape(shape), types.reshape(shape), mask, scored, seed


def make_torch_bert(cls_name: str, cfg: dict, seed: int, dtype):
    config = transformers.BertConfig(
        **cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    perturb_torch(model, seed)
    return model.to(dtype)


def convert(theirs, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heads the torch class lacks keep their init
        return hf_bert.from_state(theirs.config.to_dict(), torch_state(theirs), dtype)


def torch_inputs(ids, types, mask) -> dict:
    return dict(
        input_ids=torch.from_numpy(ids),
        token_type_ids=torch.from_numpy(types),
        attention_mask=torch.from_numpy(mask),
    )


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=8)
@given(case=bert_cases())
def test_masked_lm_matches(precision, case):
    cfg, ids, types, mask, scored, seed = case
    labels = np.where(scored, ids, -100)
    assume(scored.any())
    theirs = make_torch_bert("BertForMaskedLM", cfg, seed, precision.torch_dtype)
    ours = convert(theirs, precision.np_dtype)
    entries = hf_bert.tensor_map(ours.config)
    assert_mapping_exact(entries, ours, theirs, hf_bert.TIED)

    out = ours(ids, labels=labels, attention_mask=mask, token_type_ids=types, head="mlm")
    ref = theirs(
        **torch_inputs(ids, types, mask), labels=torch.from_numpy(labels),
        output_hidden_states=True,
    )  # fmt: skip
    atol = precision.logits_atol
    assert out.logits.dtype == precision.np_dtype
    assert_close(out.hidden_states, to_numpy(ref.hidden_states[-1]), atol, "hidden states")
    assert_close(out.logits, to_numpy(ref.logits), atol, "mlm logits")
    assert abs(out.loss - ref.loss.item()) <= atol

    ours.zero_grad()
    ours.backward()
    ref.loss.backward()
    assert_grads_match(entries, ours, theirs, precision.grad_rtol)


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=8)
@given(case=bert_cases(), data=st.data())
def test_sequence_classification_matches(precision, case, data):
    """Pooler output, classification logits, the loss transformers picks (regression for one
    label, cross-entropy for integer labels) and all gradients."""
    cfg, ids, types, mask, _, seed = case
    batch, num_labels = ids.shape[0], cfg["num_labels"]
    if num_labels == 1:
        labels = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=batch, max_size=batch)))
        labels = labels.astype(precision.np_dtype)
    else:
        labels = np.array(
            data.draw(st.lists(st.integers(0, num_labels - 1), min_size=batch, max_size=batch))
        )
    theirs = make_torch_bert("BertForSequenceClassification", cfg, seed, precision.torch_dtype)
    ours = convert(theirs, precision.np_dtype)
    entries = hf_bert.tensor_map(ours.config)
    assert_mapping_exact(entries, ours, theirs, hf_bert.TIED)

    out = ours(ids, labels=labels, attention_mask=mask, token_type_ids=types,
               head="classification")  # fmt: skip
    ref = theirs(**torch_inputs(ids, types, mask), labels=torch.from_numpy(labels))
    base = theirs.bert(**torch_inputs(ids, types, mask))  # BertModel inside the classifier
    atol = precision.logits_atol
    assert_close(out.hidden_states, to_numpy(base.last_hidden_state), atol, "hidden states")
    assert_close(out.pooler_output, to_numpy(base.pooler_output), atol, "pooler output")
    assert_close(out.logits, to_numpy(ref.logits), atol, "classification logits")
    assert abs(out.loss - ref.loss.item()) <= atol

    ours.zero_grad()
    ours.backward()
    ref.loss.backward()
    assert_grads_match(entries, ours, theirs, precision.grad_rtol)


def test_from_pretrained_and_load_bert_agree(tmp_path):
    cfg = dict(vocab_size=13, num_hidden_layers=2, num_attention_heads=2, hidden_size=6,
               intermediate_size=10, max_position_embeddings=8, type_vocab_size=2,
               hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0, num_labels=2)  # fmt: skip
    theirs = make_torch_bert("BertForMaskedLM", cfg, 5, torch.float32)
    theirs.save_pretrained(tmp_path)
    ids = np.array([[2, 5, 7, 0, 12]])
    expected = to_numpy(theirs(input_ids=torch.from_numpy(ids)).logits)
    with pytest.warns(UserWarning, match="classifier"):
        ours = load_bert(tmp_path)
    assert_close(ours(ids).logits, expected, 1e-4, "load_bert logits")
    from numpyllm.models.bert import BERT

    if hasattr(BERT, "from_pretrained"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = BERT.from_pretrained(tmp_path)
        assert_close(again(ids).logits, expected, 1e-4, "BERT.from_pretrained logits")
    if hasattr(ours, "save_pretrained"):  # and back through the model's own method
        ours.save_pretrained(tmp_path / "again")
        theirs_again = transformers.BertForMaskedLM.from_pretrained(tmp_path / "again").eval()
        logits = to_numpy(theirs_again(input_ids=torch.from_numpy(ids)).logits)
        assert_close(logits, expected, 1e-4, "saved")
