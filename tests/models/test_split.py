"""BERT and T5 with their batch split over threads (``num_threads``, numpyllm.nn.execution)
compute what one thread computes: the same loss, outputs and gradients, whatever the split,
the padding and the label mask; replicas share the model's arrays; errors still surface."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.models.bert import BERT, BertConfig
from numpyllm.models.t5 import T5, T5Config
from numpyllm.nn import parallel
from numpyllm.nn.execution import split_parts
from numpyllm.nn.parallel import batch_slices

VOCAB = 11
BERT_T_MAX = 9
RTOL, ATOL = 1e-10, 1e-12
BERT_FIELDS = ("logits", "hidden_states", "pooler_output")
T5_FIELDS = ("logits", "hidden_states", "encoder_hidden_states")


# ---- models --------------------------------------------------------------------------------
def randomized(model, rng: np.random.Generator, scale: float):
    """O(1) random values everywhere (norm weights around 1), so no gradient term is tiny."""
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape)
        p.data[...] = 1.0 + 0.3 * noise if "norm" in name else scale * noise
    return model


def bert_model(seed: int = 0, **overrides) -> BERT:
    fields = dict(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=8, d_ff=12,
                  max_seq_len=BERT_T_MAX, type_vocab_size=3, dropout=0.0, num_labels=3)  # fmt: skip
    fields.update(overrides)
    model = BERT(BertConfig(**fields), rng=np.random.default_rng(seed)).astype(np.float64)
    return randomized(model, np.random.default_rng(seed + 1), 0.4)


def t5_model(seed: int = 0, **overrides) -> T5:
    fields = dict(vocab_size=VOCAB, d_model=8, d_kv=3, d_ff=6, n_layer=2, n_decoder_layer=2,
                  n_head=2, relative_attention_num_buckets=8, relative_attention_max_distance=6,
                  dropout=0.0)  # fmt: skip
    fields.update(overrides)
    model = T5(T5Config(**fields), rng=np.random.default_rng(seed)).astype(np.float64)
    return randomized(model, np.random.default_rng(seed + 1), 0.5)


FIELDS = {"bert": BERT_FIELDS, "t5": T5_FIELDS}


def make_model(kind: str, seed: int, **overrides):
    return bert_model(seed, **overrides) if kind == "bert" else t5_model(seed, **overrides)


def labelled_batch(kind: str, rng: np.random.Generator, B: int, mask: bool = False) -> dict:
    """B rows for a "bert" model (5 tokens, mlm labels) or a "t5" one (4 tokens in, 3 out)."""
    T, S = (5, 5) if kind == "bert" else (4, 3)
    low = 1 if kind == "bert" else 0
    inputs = dict(input_ids=rng.integers(low, VOCAB, (B, T)), labels=rng.integers(0, VOCAB, (B, S)))
    if mask:
        inputs["attention_mask"] = random_keep_mask(rng, (B, T))
    return inputs


# ---- running and comparing -------------------------------------------------------------------
def run(model, threads, dlogits=None, **inputs):
    """One forward and backward from zero gradients: the output and a copy of every gradient."""
    model.num_threads = threads
    model.zero_grad()
    out = model(**inputs)
    model.backward(dlogits)
    return out, {name: p.grad.copy() for name, p in model.named_parameters()}


def assert_same(result, reference, fields, exact: bool = False):
    (out, grads), (ref, ref_grads) = result, reference

    def close(a, b, msg):
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=msg)
        else:
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=msg)

    for field in fields:
        assert getattr(out, field).shape == getattr(ref, field).shape, field
        close(getattr(out, field), getattr(ref, field), field)
    if ref.loss is None:
        assert out.loss is None
    else:
        assert isinstance(out.loss, float)
        if exact:
            assert out.loss == ref.loss
        else:
            assert out.loss == pytest.approx(ref.loss, rel=RTOL, abs=ATOL)
    assert list(grads) == list(ref_grads)
    for name, grad in grads.items():
        close(grad, ref_grads[name], name)


def n_parts(batch: int, threads: int) -> int:
    return len(batch_slices(batch, threads))


def check_replicas_are_clean(model) -> None:
    """Replicas share every parameter array with the model and hold no gradient."""
    for replica in model._replicas:
        assert replica is not model and replica._replicas == []
        for p, r in zip(model.parameters(), replica.parameters(), strict=True):
            assert r is not p
            assert np.shares_memory(r.data, p.data)
            assert r.grad is None


# ---- inputs ----------------------------------------------------------------------------------
def random_keep_mask(rng: np.random.Generator, shape) -> np.ndarray:
    """0/1 mask with random zeros; every row keeps its first token."""
    mask = (rng.random(shape) < 0.6).astype(np.int64)
    mask[:, 0] = 1
    return mask


def masked_labels(rng, shape, keep: float, dead_rows) -> np.ndarray:
    """Random ids, -100 with probability 1 - keep and on every row of ``dead_rows``."""
    labels = rng.integers(0, VOCAB, size=shape)
    labels[rng.random(shape) >= keep] = -100
    labels[dead_rows] = -100
    return labels


dead_row_choices = st.sampled_from(["none", "first", "last", "all"])


def dead_rows(kind: str, batch: int) -> slice:
    """Rows whose labels are all -100: none, the first half (the model's own part, for two
    threads), the last half (a replica's), or the whole batch."""
    half = (batch + 1) // 2
    return {"none": slice(0, 0), "first": slice(0, half), "last": slice(batch - half, batch),
            "all": slice(0, batch)}[kind]  # fmt: skip


@st.composite
def bert_batches(draw):
    B = draw(st.integers(1, 5), label="B")
    T = draw(st.integers(1, 6), label="T")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    mask = random_keep_mask(rng, (B, T)) if draw(st.booleans(), label="mask") else None
    ids = rng.integers(1, VOCAB, size=(B, T))
    if mask is not None and draw(st.booleans(), label="pad ids"):
        ids = ids * mask  # pad id 0 where padded (no lookup gradient for the pad row)
    types = rng.integers(0, 3, size=(B, T)) if draw(st.booleans(), label="types") else None
    keep = draw(st.sampled_from([1.0, 0.5, 0.2, 0.0]), label="keep")
    labels = masked_labels(rng, (B, T), keep, dead_rows(draw(dead_row_choices), B))
    return dict(input_ids=ids, labels=labels, attention_mask=mask, token_type_ids=types)


# ---- 1. BERT masked LM: split == one thread ----------------------------------------------------
@given(inputs=bert_batches(), threads=st.integers(1, 4), seed=st.integers(0, 2))
def test_bert_mlm_split_matches_one_thread(inputs, threads, seed):
    model = bert_model(seed)
    reference = run(model, 1, **inputs)
    assert model._replicas == []
    assert_same(run(model, threads, **inputs), reference, BERT_FIELDS)
    B = inputs["input_ids"].shape[0]
    assert len(model._replicas) == n_parts(B, threads) - 1  # the batch really was split
    check_replicas_are_clean(model)
    if np.all(inputs["labels"] == -100):  # nothing scored: loss 0 and no gradient at all
        assert reference[0].loss == 0.0
        assert all(not np.any(g) for g in reference[1].values())


@pytest.mark.parametrize(
    "B, threads, ignored_rows",
    [
        (4, 2, [0, 1]),  # the model's own part scores nothing
        (4, 2, [2, 3]),  # the replica's part scores nothing
        (5, 3, [2, 3, 4]),  # two replicas score nothing
        (5, 2, [0]),  # parts of 2 and 3 rows, unevenly scored
        (6, 4, [0, 1, 2, 3, 4, 5]),  # the whole batch: loss 0, gradients 0
    ],
)
def test_bert_mlm_parts_with_uneven_or_no_scored_tokens(B, threads, ignored_rows):
    rng = np.random.default_rng(B * 10 + threads)
    ids = rng.integers(1, VOCAB, size=(B, 7))
    labels = masked_labels(rng, (B, 7), 0.5, ignored_rows)
    kept = [b for b in range(B) if b not in ignored_rows]
    labels[kept, 0] = ids[kept, 0]  # every other row scores at least one token
    model = bert_model(1)
    reference = run(model, 1, input_ids=ids, labels=labels)
    result = run(model, threads, input_ids=ids, labels=labels)
    assert_same(result, reference, BERT_FIELDS)
    if len(ignored_rows) == B:
        assert result[0].loss == 0.0
        assert all(not np.any(g) for g in result[1].values())
    else:
        assert result[0].loss > 0.0


def test_bert_split_loss_is_the_token_weighted_mean_of_the_parts():
    rng = np.random.default_rng(3)
    ids = rng.integers(1, VOCAB, size=(4, 6))
    labels = ids.copy()
    labels[0, 1:] = -100  # part 0 (rows 0-1): 1 + 6 scored tokens; part 1 (rows 2-3): 12
    model = bert_model(2)
    split = run(model, 2, input_ids=ids, labels=labels)[0].loss
    halves = [run(model, 1, input_ids=ids[r], labels=labels[r])[0].loss
              for r in (slice(0, 2), slice(2, 4))]  # fmt: skip
    assert split == pytest.approx((7 * halves[0] + 12 * halves[1]) / 19, rel=RTOL)
    assert abs(split - np.mean(halves)) > 1e-6


# ---- 2. BERT classification head, the three kinds of labels -------------------------------------
def classification_labels(kind: str, rng: np.random.Generator, B: int, C: int) -> np.ndarray:
    if kind == "class":
        return rng.integers(0, C, size=B)
    if kind == "regression":
        return rng.standard_normal(B)
    return (rng.random((B, C)) < 0.5).astype(np.float64)  # multi-label


@pytest.mark.parametrize(
    "kind, num_labels",
    [("class", 2), ("class", 4), ("regression", 1), ("multi", 3)],
)
@pytest.mark.parametrize("B, threads", [(2, 2), (5, 3), (3, 4)])
def test_bert_classification_split_matches_one_thread(kind, num_labels, B, threads):
    rng = np.random.default_rng(B * 7 + threads)
    ids = rng.integers(1, VOCAB, size=(B, 6))
    mask = random_keep_mask(rng, (B, 6))
    types = rng.integers(0, 3, size=(B, 6))
    labels = classification_labels(kind, rng, B, num_labels)
    inputs = dict(input_ids=ids, labels=labels, attention_mask=mask, token_type_ids=types,
                  head="classification")  # fmt: skip
    model = bert_model(3, num_labels=num_labels)
    reference = run(model, 1, **inputs)
    assert reference[0].logits.shape == (B, num_labels)
    assert_same(run(model, threads, **inputs), reference, BERT_FIELDS)
    assert len(model._replicas) == n_parts(B, threads) - 1
    grads = reference[1]  # the classification head's gradients, not the mlm head's
    assert np.any(grads["classifier.weight"]) and not np.any(grads["mlm_transform.weight"])


def test_bert_regression_labels_may_be_a_column():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(3, 5))
    labels = rng.standard_normal((3, 1))
    model = bert_model(0, num_labels=1)
    reference = run(model, 1, input_ids=ids, labels=labels.ravel(), head="classification")
    result = run(model, 3, input_ids=ids, labels=labels, head="classification")
    assert_same(result, reference, BERT_FIELDS)


# ---- 3. backward from a given dlogits ------------------------------------------------------------
@pytest.mark.parametrize("head", ["mlm", "classification"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_bert_split_backward_from_dlogits_matches_one_thread(head, with_labels):
    rng = np.random.default_rng(4)
    ids = rng.integers(1, VOCAB, size=(5, 6))
    mask = random_keep_mask(rng, (5, 6))
    labels = None
    if with_labels:  # dlogits win over the loss
        labels = rng.integers(0, 3, size=5) if head == "classification" else ids
    shape = (5, 3) if head == "classification" else (5, 6, VOCAB)
    dlogits = rng.standard_normal(shape)
    inputs = dict(input_ids=ids, labels=labels, attention_mask=mask, head=head)
    model = bert_model(4)
    reference = run(model, 1, dlogits=dlogits, **inputs)
    assert (reference[0].loss is None) == (not with_labels)
    assert_same(run(model, 3, dlogits=dlogits, **inputs), reference, BERT_FIELDS)
    check_replicas_are_clean(model)


@pytest.mark.parametrize("threads", [1, 3])
def test_bert_wrong_dlogits_shape_raises_and_the_forward_survives(threads):
    rng = np.random.default_rng(5)
    ids = rng.integers(1, VOCAB, size=(4, 5))
    dlogits = rng.standard_normal((4, 5, VOCAB))
    model = bert_model(5)
    reference = run(model, 1, dlogits=dlogits, input_ids=ids)
    model.num_threads = threads
    model.zero_grad()
    out = model(ids)
    for wrong in (dlogits[:3], dlogits[..., :-1], dlogits[0]):
        with pytest.raises(ValueError, match="dlogits must have shape"):
            model.backward(wrong)
    assert all(not np.any(p.grad) for p in model.parameters())  # nothing was half-done
    model.backward(dlogits)  # the forward's state survived the refused calls
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert_same((out, grads), reference, BERT_FIELDS)


@pytest.mark.parametrize("threads", [1, 3])
def test_t5_wrong_dlogits_shape_raises_and_the_forward_survives(threads):
    rng = np.random.default_rng(6)
    ids = rng.integers(0, VOCAB, size=(4, 5))
    dec = rng.integers(0, VOCAB, size=(4, 3))
    dlogits = rng.standard_normal((4, 3, VOCAB))
    model = t5_model(6)
    inputs = dict(input_ids=ids, decoder_input_ids=dec)
    reference = run(model, 1, dlogits=dlogits, **inputs)
    model.num_threads = threads
    model.zero_grad()
    out = model(**inputs)
    with pytest.raises(ValueError, match="dlogits must have"):
        model.backward(dlogits[:, :2])
    model.backward(dlogits)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert_same((out, grads), reference, T5_FIELDS)


# ---- 4. gradients accumulate ---------------------------------------------------------------------
@pytest.mark.parametrize("model_kind", ["bert", "t5"])
def test_split_gradients_accumulate_over_calls(model_kind):
    rng = np.random.default_rng(7)
    model = make_model(model_kind, 7)
    batches = [labelled_batch(model_kind, rng, 5), labelled_batch(model_kind, rng, 5, mask=True)]
    singles = [run(model, 1, **batch)[1] for batch in batches]
    model.num_threads = 3
    model.zero_grad()
    for batch in batches:
        model(**batch)
        model.backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, singles[0][name] + singles[1][name], rtol=RTOL,
                                   atol=ATOL, err_msg=name)  # fmt: skip
    check_replicas_are_clean(model)


# ---- 5. T5: split == one thread ------------------------------------------------------------------
@st.composite
def t5_batches(draw):
    B = draw(st.integers(1, 5), label="B")
    T = draw(st.integers(1, 6), label="T")
    S = draw(st.integers(1, 5), label="S")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    inputs = dict(input_ids=rng.integers(0, VOCAB, size=(B, T)))
    if draw(st.booleans(), label="mask"):
        inputs["attention_mask"] = random_keep_mask(rng, (B, T))
    keep = draw(st.sampled_from([1.0, 0.5, 0.2, 0.0]), label="keep")
    inputs["labels"] = masked_labels(rng, (B, S), keep, dead_rows(draw(dead_row_choices), B))
    if draw(st.booleans(), label="decoder ids"):  # else shift_right(labels)
        inputs["decoder_input_ids"] = rng.integers(0, VOCAB, size=(B, S))
    if draw(st.booleans(), label="decoder mask"):
        inputs["decoder_attention_mask"] = random_keep_mask(rng, (B, S))
    return inputs


@given(
    inputs=t5_batches(),
    threads=st.integers(1, 4),
    variant=st.sampled_from([("relu", True), ("gated-gelu", False)]),
    given_encoder=st.booleans(),
)
def test_t5_split_matches_one_thread(inputs, threads, variant, given_encoder):
    feed_forward, tie = variant
    model = t5_model(8, feed_forward=feed_forward, tie_word_embeddings=tie)
    if given_encoder:  # the decoder only; the gradient stops at the encoder's output
        ids = inputs.pop("input_ids")
        inputs["encoder_outputs"] = model.encode(ids, inputs.get("attention_mask"))
    reference = run(model, 1, **inputs)
    assert model._replicas == []
    result = run(model, threads, **inputs)
    assert_same(result, reference, T5_FIELDS)
    B = inputs["labels"].shape[0]
    assert len(model._replicas) == n_parts(B, threads) - 1
    check_replicas_are_clean(model)
    if given_encoder:
        np.testing.assert_array_equal(result[0].encoder_hidden_states, inputs["encoder_outputs"])
        for grads in (reference[1], result[1]):
            for name, grad in grads.items():
                if name.startswith("encoder."):
                    assert not np.any(grad), name
    if np.all(inputs["labels"] == -100):
        assert result[0].loss == 0.0 and reference[0].loss == 0.0
        assert all(not np.any(g) for g in result[1].values())


def test_t5_split_backward_from_dlogits_matches_one_thread():
    rng = np.random.default_rng(9)
    ids = rng.integers(0, VOCAB, size=(5, 4))
    dec = rng.integers(0, VOCAB, size=(5, 3))
    dlogits = rng.standard_normal((5, 3, VOCAB))
    mask = random_keep_mask(rng, (5, 4))
    inputs = dict(input_ids=ids, decoder_input_ids=dec, attention_mask=mask)
    model = t5_model(9, feed_forward="gated-gelu", tie_word_embeddings=False)
    reference = run(model, 1, dlogits=dlogits, **inputs)
    assert reference[0].loss is None
    assert_same(run(model, 2, dlogits=dlogits, **inputs), reference, T5_FIELDS)


# ---- 6. T5 generation and caching are never split ------------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False])
def test_t5_generation_does_not_depend_on_num_threads(use_cache):
    rng = np.random.default_rng(10)
    ids = rng.integers(2, VOCAB, size=(3, 5))
    mask = random_keep_mask(rng, (3, 5))
    generated = {}
    for threads in (1, 3):
        model = t5_model(10)
        model.num_threads = threads
        generated[threads] = model.generate(ids, attention_mask=mask, max_new_tokens=5,
                                            use_cache=use_cache)  # fmt: skip
        assert model.training  # generate restores the mode
    np.testing.assert_array_equal(generated[3], generated[1])
    assert generated[1].shape[0] == 3


def test_t5_forward_with_a_cache_is_not_split():
    rng = np.random.default_rng(11)
    ids = rng.integers(0, VOCAB, size=(4, 5))
    dec = rng.integers(0, VOCAB, size=(4, 2))
    model = t5_model(11).eval()
    model.num_threads = 4
    first = model(ids, decoder_input_ids=dec, use_cache=True)
    assert model._replicas == [] and model._parts is None
    assert first.past_key_values is not None
    step = rng.integers(0, VOCAB, size=(4, 1))
    model(ids, decoder_input_ids=step, past_key_values=first.past_key_values)
    assert model._replicas == [] and model._parts is None
    with pytest.raises(RuntimeError, match="inference only"):
        model.backward(np.zeros((4, 1, VOCAB)))
    # the same decoder, unsplit and uncached, gives the same logits
    model.num_threads = 1
    whole = model(ids, decoder_input_ids=np.concatenate([dec, step], axis=1))
    np.testing.assert_allclose(first.logits, whole.logits[:, :2], rtol=RTOL, atol=ATOL)


# ---- 7. replicas ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_kind", ["bert", "t5"])
@pytest.mark.parametrize("B, threads", [(1, 4), (3, 1), (2, 2), (2, 4), (5, 3), (4, 4)])
def test_replicas_share_the_arrays_and_hold_no_gradient(model_kind, B, threads):
    rng = np.random.default_rng(B * 10 + threads)
    model = make_model(model_kind, 12)
    inputs = labelled_batch(model_kind, rng, B)
    model.num_threads = threads
    assert len(split_parts(model, B, B * 5)) == min(threads, B)
    model.zero_grad()
    model(**inputs)
    expected = min(threads, B) - 1
    assert len(model._replicas) == expected
    for replica in model._replicas:
        assert type(replica) is type(model)
        for p, r in zip(model.parameters(), replica.parameters(), strict=True):
            assert np.shares_memory(r.data, p.data)
    model.backward()
    check_replicas_are_clean(model)
    assert len(model._replicas) == expected
    if expected:  # a smaller split later reuses the replicas it has
        model.num_threads = 2
        model(**inputs)
        model.backward()
        assert len(model._replicas) == expected
        check_replicas_are_clean(model)


@pytest.mark.parametrize("threads", [1, 0])
def test_one_or_no_threads_makes_no_replicas(threads):
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(4, 5))
    for model in (bert_model(13), t5_model(13)):
        model.num_threads = threads
        labels = ids if isinstance(model, BERT) else ids[:, :3]
        model(input_ids=ids, labels=labels)
        assert model._parts is None
        model.backward()
        assert model._replicas == []


def test_auto_splits_only_big_enough_passes_over_the_available_cores(monkeypatch):
    """Under "auto": the cores this process may use, for a pass of at least MIN_SPLIT_WORK
    tokens * d_model; a smaller pass is not split."""
    assert BERT.num_threads == "auto" and T5.num_threads == "auto"
    rng = np.random.default_rng(14)
    ids = rng.integers(1, VOCAB, size=(4, 5))  # 20 tokens * d_model 8 = 160
    model = bert_model(14)
    reference = run(model, 1, input_ids=ids, labels=ids)
    assert_same(run(model, "auto", input_ids=ids, labels=ids), reference, BERT_FIELDS)
    assert model._replicas == []  # a tiny pass stays on one thread
    monkeypatch.setattr(parallel, "available_cores", lambda: 3)
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 161)
    run(model, "auto", input_ids=ids, labels=ids)
    assert model._replicas == []  # 160 < 161
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 160)
    assert_same(run(model, "auto", input_ids=ids, labels=ids), reference, BERT_FIELDS)
    assert len(model._replicas) == 2  # three cores, three parts
    t5 = t5_model(14)  # T5 counts its longer stack's tokens: max(5, 3) * 4 rows * d_model 8
    inputs = dict(input_ids=ids, labels=ids[:, :3])
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 161)
    run(t5, "auto", **inputs)
    assert t5._replicas == []
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 160)
    reference = run(t5, 1, **inputs)
    assert_same(run(t5, "auto", **inputs), reference, T5_FIELDS)
    assert len(t5._replicas) == 2


@pytest.mark.parametrize("model_kind", ["bert", "t5"])
def test_replicas_follow_rebound_parameter_arrays(model_kind):
    """An optimizer may rebind ``p.data``: the replicas see the new arrays on the next call."""
    rng = np.random.default_rng(15)
    model, fields = make_model(model_kind, 15), FIELDS[model_kind]
    inputs = labelled_batch(model_kind, rng, 4)
    run(model, 4, **inputs)  # makes the replicas
    for p in model.parameters():
        p.data = p.data + 0.1 * rng.standard_normal(p.shape)  # new arrays, new values
    reference = run(model, 1, **inputs)
    assert_same(run(model, 4, **inputs), reference, fields)
    check_replicas_are_clean(model)


# ---- 8. dropout: a function of the model's Generators --------------------------------------------
@pytest.mark.parametrize("model_kind", ["bert", "t5"])
def test_split_dropout_is_determined_by_the_seed(model_kind):
    rng = np.random.default_rng(16)
    inputs, fields = labelled_batch(model_kind, rng, 5, mask=True), FIELDS[model_kind]
    make = lambda: make_model(model_kind, 16, dropout=0.3)
    first, second = make(), make()
    assert first.training and second.training
    for _ in range(2):  # the Generators advance alike, call after call
        a = run(first, 3, **inputs)
        b = run(second, 3, **inputs)
        assert_same(a, b, fields, exact=True)
    assert len(first._replicas) == 2
    # the dropout was really on: eval mode gives another loss
    first.eval()
    assert run(first, 3, **inputs)[0].loss != pytest.approx(a[0].loss, rel=1e-6)
    # and each call draws new masks
    second.train()
    assert run(second, 3, **inputs)[0].loss != pytest.approx(b[0].loss, rel=1e-6)


def test_eval_mode_split_matches_one_thread_despite_dropout():
    """Replicas made in training mode follow the model into eval mode (no dropout)."""
    rng = np.random.default_rng(17)
    ids = rng.integers(1, VOCAB, (4, 6))
    model = bert_model(17, dropout=0.3)
    run(model, 2, input_ids=ids, labels=ids)  # training mode: makes the replica
    model.eval()
    reference = run(model, 1, input_ids=ids, labels=ids)
    assert_same(run(model, 2, input_ids=ids, labels=ids), reference, BERT_FIELDS)
    assert all(not m.training for r in model._replicas for m in r.modules())


# ---- 9. errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kind, num_labels", [("class", 3), ("regression", 1), ("multi", 3)])
def test_bert_classification_labels_need_one_row_per_input_row(threads, kind, num_labels):
    rng = np.random.default_rng(18)
    B = 4
    ids = rng.integers(1, VOCAB, (B, 5))
    model = bert_model(18, num_labels=num_labels)
    model.num_threads = threads
    for rows in (B + 1, B - 1):  # B + 1 rows: slicing into parts alone would not notice
        labels = classification_labels(kind, rng, rows, num_labels)
        with pytest.raises(ValueError, match="one row per input row"):
            model(ids, labels=labels, head="classification")
    with pytest.raises(ValueError, match="one row per input row"):
        model(ids, labels=np.array(1), head="classification")
    assert model._replicas == []  # refused before any part ran


@pytest.mark.parametrize("model_kind", ["bert", "t5"])
@pytest.mark.parametrize("threads", [1, 3])
def test_backward_without_a_loss_or_twice_raises(model_kind, threads):
    rng = np.random.default_rng(19)
    if model_kind == "bert":
        model = bert_model(19)
        ids = rng.integers(1, VOCAB, (4, 5))
        unlabelled, labelled = dict(input_ids=ids), dict(input_ids=ids, labels=ids)
        dlogits = rng.standard_normal((4, 5, VOCAB))
    else:
        model = t5_model(19)
        ids, dec = rng.integers(0, VOCAB, (4, 5)), rng.integers(0, VOCAB, (4, 3))
        unlabelled = dict(input_ids=ids, decoder_input_ids=dec)
        labelled = dict(input_ids=ids, labels=dec)
        dlogits = rng.standard_normal((4, 3, VOCAB))
    model.num_threads = threads
    model.zero_grad()
    model(**unlabelled)
    match = "needs a loss" if threads > 1 or model_kind == "bert" else "no loss"
    with pytest.raises(RuntimeError, match=match):
        model.backward()
    assert all(not np.any(p.grad) for p in model.parameters())
    model.backward(dlogits)  # the refused call left the forward's state in place
    with pytest.raises(RuntimeError):
        model.backward(dlogits)
    model(**labelled)
    model.backward()
    with pytest.raises(RuntimeError):
        model.backward()


@pytest.mark.parametrize("model_kind", ["bert", "t5"])
def test_backward_before_any_forward_raises(model_kind):
    model = bert_model(20) if model_kind == "bert" else t5_model(20)
    model.num_threads = 3
    with pytest.raises(RuntimeError):
        model.backward()


# ---- 10. an error in one part --------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bert_label_error_in_the_last_part_propagates(threads):
    rng = np.random.default_rng(21)
    ids = rng.integers(1, VOCAB, (5, 5))
    labels = np.array([0, 1, 2, 0, 3])  # num_labels = 3: only the last row is out of range
    model = bert_model(21)
    model.num_threads = threads
    with pytest.raises(ValueError, match="class label 3 is out of range"):
        model(ids, labels=labels, head="classification")
    with pytest.raises(RuntimeError, match="forward"):  # no forward to go back through
        model.backward()
    # the model still works, and agrees with one thread
    labels[-1] = 1
    reference = run(model, 1, input_ids=ids, labels=labels, head="classification")
    assert_same(run(model, threads, input_ids=ids, labels=labels, head="classification"),
                reference, BERT_FIELDS)  # fmt: skip


class PartFailed(Exception):
    pass


@pytest.mark.parametrize("model_kind", ["bert", "t5"])
@pytest.mark.parametrize("failing", [0, -1])
def test_an_exception_in_one_part_propagates_with_its_type(model_kind, failing, monkeypatch):
    rng = np.random.default_rng(22)
    model, fields = make_model(model_kind, 22), FIELDS[model_kind]
    inputs = labelled_batch(model_kind, rng, 4)
    reference = run(model, 1, **inputs)
    run(model, 3, **inputs)  # makes the two replicas
    target = [model, *model._replicas][failing]

    def boom(*args, **kwargs):
        raise PartFailed("a part failed")

    monkeypatch.setattr(target, "_forward", boom)
    model.num_threads = 3
    with pytest.raises(PartFailed, match="a part failed"):
        model(**inputs)
    with pytest.raises(RuntimeError, match="last forward failed"):
        model.backward()
    monkeypatch.undo()
    assert_same(run(model, 3, **inputs), reference, fields)  # works again


@pytest.mark.parametrize("model_kind", ["bert", "t5"])
def test_backward_after_a_failed_split_forward_raises(model_kind, monkeypatch):
    rng = np.random.default_rng(23)
    model = bert_model(23) if model_kind == "bert" else t5_model(23)
    model.num_threads = 2
    if model_kind == "bert":
        ids = rng.integers(1, VOCAB, (4, 5))
        inputs = dict(input_ids=ids, labels=np.array([0, 1, 2, 7]), head="classification")
        error = ValueError  # class label 7 is out of range: only the last part fails
    else:
        inputs = labelled_batch("t5", rng, 4)
        run(model, 2, **inputs)  # makes the replica

        def boom(*args, **kwargs):
            raise PartFailed("a part failed")

        monkeypatch.setattr(model._replicas[0], "_forward", boom)
        error = PartFailed
    model.zero_grad()
    with pytest.raises(error):
        model(**inputs)
    try:
        # as with one thread: there is no forward to go back through
        with pytest.raises(RuntimeError, match="last forward failed"):
            model.backward()
        with pytest.raises(RuntimeError, match="forward"):  # and it stays refused
            model.backward()
    finally:
        assert all(not np.any(p.grad) for p in model.parameters()), "part 0's gradient was added"


def test_t5_encode_after_a_split_forward_leaves_nothing_to_go_back_through():
    rng = np.random.default_rng(24)
    ids, labels = rng.integers(0, VOCAB, (4, 4)), rng.integers(0, VOCAB, (4, 3))
    for threads in (1, 2):
        model = t5_model(24)
        model.num_threads = threads
        model.zero_grad()
        model(ids, labels=labels)
        model.encode(ids)  # replaces the encoder's saved activations
        with pytest.raises(RuntimeError, match="forward"):
            model.backward()
        assert all(not np.any(p.grad) for p in model.parameters())


# ---- 11. recomputed activations ------------------------------------------------------------------
@pytest.mark.parametrize("model_kind", ["bert", "t5"])
@pytest.mark.parametrize("threads", [1, 3])
def test_recomputed_activations_give_the_stored_ones_exactly(model_kind, threads):
    """recompute_activations (the execution layer's, as GPT's) replays every dropout mask."""
    rng = np.random.default_rng(25)
    inputs = labelled_batch(model_kind, rng, 5, mask=True)
    results = []
    for recompute in (False, True):
        model = make_model(model_kind, 25, dropout=0.3)
        model.recompute_activations = recompute
        results.append([run(model, threads, **inputs) for _ in range(2)])
    for stored, recomputed in zip(*results):
        assert_same(recomputed, stored, FIELDS[model_kind], exact=True)
    assert results[1][0][0].loss != results[1][1][0].loss  # fresh masks each step
