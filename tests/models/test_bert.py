"""BERT: structure, maths against a plain reference, gradients of both heads, padding, batch
independence, dtype, training, masking of tokens, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.gradcheck import gradcheck_model
from numpyllm.models.bert import BERT, BertConfig
from numpyllm.optim import AdamW

GRAD_TOL = 1e-6


def tiny_config(**overrides) -> BertConfig:
    fields = dict(
        vocab_size=11,
        n_layer=2,
        n_head=2,
        d_model=8,
        d_ff=12,
        max_seq_len=9,
        type_vocab_size=3,
        dropout=0.0,
        num_labels=3,
    )
    fields.update(overrides)
    return BertConfig(**fields)


NORM_WEIGHTS = ("norm.weight", "layer_norm.weight")


def randomized(model: BERT, rng: np.random.Generator) -> BERT:
    """O(1) random values everywhere (LayerNorm weights around 1): no gradient term can hide
    behind a small initialisation."""
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape)
        if name.endswith(NORM_WEIGHTS):
            p.data[...] = 1.0 + 0.3 * noise
        else:
            p.data[...] = 0.4 * noise
    return model


def float64_model(seed: int = 0, **overrides) -> BERT:
    model = BERT(tiny_config(**overrides), rng=np.random.default_rng(seed))
    model.astype(np.float64)
    return randomized(model, np.random.default_rng(seed + 1))


def right_padding_mask(lengths, total: int) -> np.ndarray:
    """(B, total) 0/1 mask with the real tokens first in each row."""
    return (np.arange(total)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


def padded_batch(rng: np.random.Generator, cfg: BertConfig, lengths, total: int):
    """ids with real tokens in [1, V) (0 is the pad id) and pad ids after them; random token
    types; the mask."""
    mask = right_padding_mask(lengths, total)
    ids = rng.integers(1, cfg.vocab_size, size=(len(lengths), total)) * mask
    types = rng.integers(0, cfg.type_vocab_size, size=(len(lengths), total))
    return ids, types, mask


# ---- a plain reference forward: loops over layers and heads, HF's formulas written out ----
def _gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


REFERENCE_ACTIVATIONS = {
    "gelu": _gelu_erf,
    "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0.0),
}


def reference_forward(model: BERT, ids, types=None, attention_mask=None):
    """(hidden, pooled, mlm logits, class logits) the slow, obvious way, as Hugging Face writes
    it (masked scores get a very negative finite number added)."""
    cfg = model.config
    p = {name: param.data for name, param in model.named_parameters()}
    B, T = ids.shape
    dh = cfg.d_model // cfg.n_head
    act = REFERENCE_ACTIVATIONS[cfg.activation]
    types = np.zeros_like(ids) if types is None else types
    keep = np.ones((B, T)) if attention_mask is None else attention_mask
    additive = (1.0 - keep)[:, None, :] * -1e30  # (B, 1, T)

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        normed = (x - mean) / np.sqrt(var + cfg.layer_norm_eps)
        return normed * p[prefix + ".weight"] + p[prefix + ".bias"]

    def dense(x, prefix):
        return x @ p[prefix + ".weight"] + p[prefix + ".bias"]

    word = p["embeddings.word_embeddings.weight"]
    x = word[ids] + p["embeddings.position_embeddings.weight"][:T]
    x = layer_norm(x + p["embeddings.token_type_embeddings.weight"][types], "embeddings.layer_norm")
    for i in range(cfg.n_layer):
        pre = f"encoder.{i}."
        q, k, v = (dense(x, pre + f"attention.{n}_proj") for n in "qkv")
        heads = []
        for h in range(cfg.n_head):
            cols = slice(h * dh, (h + 1) * dh)
            scores = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / math.sqrt(dh) + additive
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            heads.append(weights @ v[..., cols])
        attn = dense(np.concatenate(heads, axis=-1), pre + "attention.o_proj")
        x = layer_norm(x + attn, pre + "attention_norm")
        ffn = dense(act(dense(x, pre + "ffn.fc_in")), pre + "ffn.fc_out")
        x = layer_norm(x + ffn, pre + "ffn_norm")
    pooled = np.tanh(dense(x[:, 0], "pooler"))
    t = layer_norm(act(dense(x, "mlm_transform")), "mlm_norm")
    mlm_logits = t @ word.T + p["mlm_bias"]
    class_logits = dense(pooled, "classifier")
    return x, pooled, mlm_logits, class_logits


def reference_cross_entropy(logits, targets) -> float:
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    keep = targets != -100
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-log_probs[keep, targets[keep]].mean())


# ---- structure --------------------------------------------------------------------------
def test_parameter_names_and_shapes_are_the_documented_table():
    cfg = BertConfig(vocab_size=30, n_layer=2, n_head=2, d_model=8, max_seq_len=12, num_labels=4)
    d, f, V = 8, 32, 30
    expected = {
        "mlm_bias": (V,),
        "embeddings.word_embeddings.weight": (V, d),
        "embeddings.position_embeddings.weight": (12, d),
        "embeddings.token_type_embeddings.weight": (2, d),
        "embeddings.layer_norm.weight": (d,),
        "embeddings.layer_norm.bias": (d,),
    }
    for i in range(2):
        for proj in "qkvo":
            expected[f"encoder.{i}.attention.{proj}_proj.weight"] = (d, d)
            expected[f"encoder.{i}.attention.{proj}_proj.bias"] = (d,)
        expected.update(
            {
                f"encoder.{i}.attention_norm.weight": (d,),
                f"encoder.{i}.attention_norm.bias": (d,),
                f"encoder.{i}.ffn.fc_in.weight": (d, f),
                f"encoder.{i}.ffn.fc_in.bias": (f,),
                f"encoder.{i}.ffn.fc_out.weight": (f, d),
                f"encoder.{i}.ffn.fc_out.bias": (d,),
                f"encoder.{i}.ffn_norm.weight": (d,),
                f"encoder.{i}.ffn_norm.bias": (d,),
            }
        )
    expected.update(
        {
            "pooler.weight": (d, d),
            "pooler.bias": (d,),
            "mlm_transform.weight": (d, d),
            "mlm_transform.bias": (d,),
            "mlm_norm.weight": (d,),
            "mlm_norm.bias": (d,),
            "classifier.weight": (d, 4),
            "classifier.bias": (4,),
        }
    )
    model = BERT(cfg)
    got = {name: p.shape for name, p in model.named_parameters()}
    assert got == expected
    assert model.num_parameters() == sum(math.prod(s) for s in expected.values())
    # every documented name appears in the module docstring's table
    import numpyllm.models.bert as bert_module

    for name in expected:
        stem = name.replace("encoder.1.", "encoder.{i}.").replace("encoder.0.", "encoder.{i}.")
        stem = stem.rsplit(".", 1)[0] if stem.endswith((".weight", ".bias")) else stem
        assert stem in bert_module.__doc__, name


def test_initialisation_follows_hugging_face():
    cfg = BertConfig(vocab_size=200, n_layer=1, n_head=2, d_model=32, max_seq_len=64, init_std=0.05)
    model = BERT(cfg, rng=np.random.default_rng(3))
    params = dict(model.named_parameters())
    word = params["embeddings.word_embeddings.weight"].data
    assert np.all(word[0] == 0)  # the pad row starts at zero
    assert abs(word[1:].std() - 0.05) < 0.005
    assert abs(params["encoder.0.ffn.fc_out.weight"].data.std() - 0.05) < 0.01  # no scaling
    for name, p in params.items():
        assert p.dtype == np.float32, name
        if name.endswith("bias"):
            assert np.all(p.data == 0), name
        if name.endswith(NORM_WEIGHTS):
            assert np.all(p.data == 1), name


def test_default_config_values():
    cfg = BertConfig(vocab_size=10, n_layer=1, n_head=2, d_model=8, max_seq_len=4)
    assert cfg.d_ff == 32
    assert (cfg.type_vocab_size, cfg.dropout, cfg.layer_norm_eps) == (2, 0.1, 1e-12)
    assert (cfg.activation, cfg.init_std, cfg.num_labels, cfg.pad_token_id) == ("gelu", 0.02, 2, 0)


def test_tied_decoder_is_the_word_embedding():
    model = float64_model()
    ids = np.array([[1, 2, 3]])
    before = model(ids).logits
    model.embeddings.word_embeddings.weight.data[5] += 1.0  # changes only the decoder's row 5 here
    after = model(ids).logits
    changed = np.abs(after - before).max(axis=(0, 1)) > 1e-9
    assert changed[5] and changed.sum() == 1


# ---- the maths ------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "relu"])
def test_matches_the_reference_forward(activation):
    model = float64_model(activation=activation)
    rng = np.random.default_rng(1)
    ids, types, mask = padded_batch(rng, model.config, [5, 3, 7], 7)
    hidden, pooled, mlm_logits, class_logits = reference_forward(model, ids, types, mask)
    out = model(ids, attention_mask=mask, token_type_ids=types)
    np.testing.assert_allclose(out.hidden_states, hidden, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pooler_output, pooled, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.logits, mlm_logits, rtol=1e-10, atol=1e-10)
    out = model(ids, attention_mask=mask, token_type_ids=types, head="classification")
    np.testing.assert_allclose(out.logits, class_logits, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.hidden_states, hidden, rtol=1e-10, atol=1e-10)


def test_losses_match_their_definitions():
    model = float64_model()
    rng = np.random.default_rng(2)
    ids, types, mask = padded_batch(rng, model.config, [6, 4], 6)
    _, _, mlm_logits, class_logits = reference_forward(model, ids, types, mask)
    labels = np.where((rng.random(ids.shape) < 0.5) & (mask == 1), ids, -100)
    labels[0, 0] = ids[0, 0]  # at least one scored position
    out = model(ids, labels=labels, attention_mask=mask, token_type_ids=types)
    assert isinstance(out.loss, float)
    assert out.loss == pytest.approx(reference_cross_entropy(mlm_logits, labels), rel=1e-10)

    classes = np.array([2, 0])
    out = model(ids, classes, attention_mask=mask, token_type_ids=types, head="classification")
    assert out.loss == pytest.approx(reference_cross_entropy(class_logits, classes), rel=1e-10)

    regression = float64_model(num_labels=1)
    targets = np.array([0.5, -1.5])
    logits = reference_forward(regression, ids, types, mask)[3][:, 0]
    out = regression(ids, targets, attention_mask=mask, token_type_ids=types, head="classification")
    assert out.logits.shape == (2, 1)
    assert out.loss == pytest.approx(float(np.mean((logits - targets) ** 2)), rel=1e-10)

    multi = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = model(ids, multi, attention_mask=mask, token_type_ids=types, head="classification")
    prob = 1.0 / (1.0 + np.exp(-class_logits))
    bce = -(multi * np.log(prob) + (1 - multi) * np.log(1 - prob)).mean()
    assert out.loss == pytest.approx(float(bce), rel=1e-10)


def test_token_types_default_to_zero():
    model = float64_model()
    ids = np.array([[3, 4, 5, 6]])
    a = model(ids).logits
    b = model(ids, token_type_ids=np.zeros_like(ids)).logits
    c = model(ids, token_type_ids=np.ones_like(ids)).logits
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert np.abs(a - c).max() > 1e-3


# ---- gradients ------------------------------------------------------------------------------
def _check(model, loss_fn, seed=0):
    errors = gradcheck_model(model, loss_fn, rng=np.random.default_rng(seed), samples_per_tensor=2)
    assert len(errors) == len(model.parameters())
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRAD_TOL, (worst, errors[worst])


def test_gradcheck_mlm_head_with_padding_and_token_types():
    model = float64_model()
    rng = np.random.default_rng(3)
    ids, types, mask = padded_batch(rng, model.config, [6, 3, 5], 6)
    labels = np.where((rng.random(ids.shape) < 0.6) & (mask == 1), ids, -100)
    labels[1, 0] = 4  # a label that differs from the input token
    _check(model, lambda: model(ids, labels, attention_mask=mask, token_type_ids=types).loss)
    assert np.all(model.pooler.weight.grad == 0)  # the unused head gets nothing
    assert np.all(model.classifier.weight.grad == 0)


def test_gradcheck_classification_head_with_padding_and_token_types():
    model = float64_model()
    rng = np.random.default_rng(4)
    ids, types, mask = padded_batch(rng, model.config, [4, 6, 2], 6)
    classes = np.array([2, 0, 1])

    def loss_fn():
        out = model(ids, classes, attention_mask=mask, token_type_ids=types, head="classification")
        return out.loss

    _check(model, loss_fn)
    assert np.all(model.mlm_bias.grad == 0)
    assert np.all(model.mlm_transform.weight.grad == 0)


@pytest.mark.parametrize("kind", ["regression", "multi-label"])
def test_gradcheck_other_classification_losses(kind):
    num_labels = 1 if kind == "regression" else 3
    model = float64_model(n_layer=1, num_labels=num_labels)
    rng = np.random.default_rng(5)
    ids, types, mask = padded_batch(rng, model.config, [4, 3], 5)
    if kind == "regression":
        labels = rng.standard_normal(2)
    else:
        labels = (rng.random((2, num_labels)) < 0.5).astype(np.float64)

    def loss_fn():
        out = model(ids, labels, attention_mask=mask, token_type_ids=types, head="classification")
        return out.loss

    _check(model, loss_fn)


def test_gradcheck_from_given_dlogits():
    """backward(dlogits=g) is the gradient of sum(logits * g)."""
    model = float64_model(n_layer=1, activation="gelu_new")
    rng = np.random.default_rng(6)
    ids, types, mask = padded_batch(rng, model.config, [5, 2], 5)
    # padded positions (pad id, whose lookup sends no gradient) are left out of the objective
    g = rng.standard_normal((2, 5, model.config.vocab_size)) * mask[..., None]

    class Probe:  # a model whose backward starts from g
        zero_grad = model.zero_grad
        named_parameters = model.named_parameters

        @staticmethod
        def backward():
            model.backward(dlogits=g)

    def objective():
        return float(np.sum(model(ids, attention_mask=mask, token_type_ids=types).logits * g))

    errors = gradcheck_model(Probe(), objective, rng=np.random.default_rng(0), samples_per_tensor=2)
    assert max(errors.values()) < GRAD_TOL


def test_pad_row_gets_no_lookup_gradient():
    """torch's padding_idx: the pad token's embedding row is not updated through the lookup,
    even where the pad id appears among real tokens; with pad_token_id=None it is."""
    ids = np.array([[2, 0, 3, 0]])
    for pad_token_id, expect_zero in ((0, True), (None, False)):
        model = float64_model(pad_token_id=pad_token_id)
        model.zero_grad()
        model(ids, np.array([1]), head="classification")
        model.backward()
        row = model.embeddings.word_embeddings.weight.grad[0]
        assert np.all(row == 0) == expect_zero
    # the tied decoder still sends its gradient to the pad row
    model = float64_model()
    model.zero_grad()
    model(ids, labels=np.array([[5, -100, -100, -100]]))
    model.backward()
    assert np.abs(model.embeddings.word_embeddings.weight.grad[0]).max() > 0


def test_gradients_accumulate():
    model = float64_model(n_layer=1)
    ids, labels = np.array([[1, 2, 3]]), np.array([[4, -100, 6]])
    model.zero_grad()
    model(ids, labels)
    model.backward()
    once = {n: p.grad.copy() for n, p in model.named_parameters()}
    model(ids, labels)
    model.backward()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-12, atol=1e-15)


# ---- properties -------------------------------------------------------------------------
@st.composite
def padded_problems(draw):
    n_head = draw(st.integers(1, 3))
    cfg = BertConfig(
        vocab_size=draw(st.integers(3, 17)),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        d_model=n_head * draw(st.integers(1, 4)),
        d_ff=draw(st.integers(1, 9)),
        max_seq_len=draw(st.integers(2, 8)),
        type_vocab_size=draw(st.integers(1, 3)),
        dropout=0.0,
        activation=draw(st.sampled_from(["gelu", "gelu_new", "relu"])),
        num_labels=draw(st.integers(2, 4)),
    )
    T = draw(st.integers(1, cfg.max_seq_len))
    lengths = draw(st.lists(st.integers(1, T), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**16))
    return cfg, T, lengths, seed


@given(padded_problems())
def test_padded_batch_equals_each_example_alone(problem):
    """Padding invariance and batch independence at once: the real positions of every row of a
    padded batch match that example run alone with no padding, and padded tokens can be
    anything."""
    cfg, T, lengths, seed = problem
    model = BERT(cfg, rng=np.random.default_rng(seed)).astype(np.float64)
    randomized(model, np.random.default_rng(seed + 1))
    rng = np.random.default_rng(seed + 2)
    ids, types, mask = padded_batch(rng, cfg, lengths, T)
    ids[mask == 0] = rng.integers(0, cfg.vocab_size, size=int((mask == 0).sum()))  # any filler
    types[mask == 0] = rng.integers(0, cfg.type_vocab_size, size=int((mask == 0).sum()))
    batch = model(ids, attention_mask=mask, token_type_ids=types)
    classes = model(ids, attention_mask=mask, token_type_ids=types, head="classification")
    for b, n in enumerate(lengths):
        alone = model(ids[b : b + 1, :n], token_type_ids=types[b : b + 1, :n])
        np.testing.assert_allclose(batch.hidden_states[b, :n], alone.hidden_states[0], atol=1e-10)
        np.testing.assert_allclose(batch.logits[b, :n], alone.logits[0], atol=1e-10)
        np.testing.assert_allclose(batch.pooler_output[b], alone.pooler_output[0], atol=1e-10)
        alone = model(
            ids[b : b + 1, :n], token_type_ids=types[b : b + 1, :n], head="classification"
        )
        np.testing.assert_allclose(classes.logits[b], alone.logits[0], atol=1e-10)


@given(padded_problems())
def test_float32_stays_float32(problem):
    cfg, T, lengths, seed = problem
    model = BERT(cfg, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 2)
    ids, types, mask = padded_batch(rng, cfg, lengths, T)
    labels = np.where(mask == 1, ids, -100)
    labels[:, 0] = ids[:, 0]
    for head, y in (("mlm", labels), ("classification", np.zeros(len(lengths), dtype=int))):
        model.zero_grad()
        out = model(ids, y, attention_mask=mask, token_type_ids=types, head=head)
        assert isinstance(out.loss, float) and np.isfinite(out.loss)
        for array in (out.logits, out.hidden_states, out.pooler_output):
            assert array.dtype == np.float32
        model.backward()
        for name, p in model.named_parameters():
            assert p.grad.dtype == np.float32, name


def test_training_mode_dropout_is_seeded_and_eval_is_deterministic():
    cfg = tiny_config(dropout=0.3)
    ids = np.array([[1, 2, 3, 4, 5]])
    a, b = BERT(cfg, rng=np.random.default_rng(7)), BERT(cfg, rng=np.random.default_rng(7))
    first = a(ids).logits
    np.testing.assert_array_equal(first, b(ids).logits)  # same seed, same masks
    assert np.abs(a(ids).logits - first).max() > 0  # a new mask each call
    a.eval()
    np.testing.assert_array_equal(a(ids).logits, a(ids).logits)


# ---- training -----------------------------------------------------------------------------
def test_overfits_one_masked_batch():
    cfg = BertConfig(vocab_size=16, n_layer=2, n_head=2, d_model=32, max_seq_len=8, dropout=0.0)
    model = BERT(cfg, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids = rng.integers(2, 16, size=(4, 8))
    masked, labels = BERT.mask_tokens(ids, 1, 16, rng, mlm_probability=0.4, special_ids=(0,))
    labels[:, 0] = ids[:, 0]  # make sure every row scores something
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(200):
        opt.zero_grad()
        out = model(masked, labels)
        first = out.loss if first is None else first
        model.backward()
        opt.step()
        if out.loss < 0.05:
            break
    assert first > 2.0
    assert out.loss < 0.05


# ---- mask_tokens ----------------------------------------------------------------------------
def test_mask_tokens_follows_the_80_10_10_rule():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=(200, 100))
    ids[:, 0] = 2  # a special token (think [CLS]) in every row
    masked, labels = BERT.mask_tokens(ids, 3, 1000, np.random.default_rng(1), special_ids=(0, 2))
    assert masked.shape == labels.shape == ids.shape
    selected = labels != -100
    assert not selected[:, 0].any()  # special tokens are never selected
    np.testing.assert_array_equal(labels[selected], ids[selected])
    np.testing.assert_array_equal(masked[~selected], ids[~selected])
    assert abs(selected[:, 1:].mean() - 0.15) < 0.015
    n = selected.sum()
    became_mask = (masked == 3) & selected
    unchanged = (masked == ids) & selected
    other = selected & ~became_mask & ~unchanged  # random replacements (a few hit themselves)
    assert abs(became_mask.sum() / n - 0.8) < 0.03
    assert abs(other.sum() / n - 0.1) < 0.02
    assert abs(unchanged.sum() / n - 0.1) < 0.02
    assert np.all(ids[:, 1:] >= 5)  # the input itself was not modified


@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_mask_tokens_is_deterministic_given_the_rng(seed, probability):
    ids = np.random.default_rng(seed).integers(0, 50, size=(3, 17))
    a = BERT.mask_tokens(ids, 1, 50, np.random.default_rng(seed), probability)
    b = BERT.mask_tokens(ids, 1, 50, np.random.default_rng(seed), probability)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.all((a[0] >= 0) & (a[0] < 50))
    if probability == 0.0:
        assert np.all(a[1] == -100) and np.array_equal(a[0], ids)
    if probability == 1.0:
        np.testing.assert_array_equal(a[1], ids)


def test_mask_tokens_errors():
    ids = np.array([[1, 2, 3]])
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="integer"):
        BERT.mask_tokens(ids.astype(float), 1, 10, rng)
    with pytest.raises(TypeError, match="Generator"):
        BERT.mask_tokens(ids, 1, 10, 0)
    with pytest.raises(ValueError, match="mlm_probability"):
        BERT.mask_tokens(ids, 1, 10, rng, mlm_probability=1.5)
    with pytest.raises(ValueError, match="mask_token_id"):
        BERT.mask_tokens(ids, 10, 10, rng)


# ---- errors ---------------------------------------------------------------------------------
def test_input_errors():
    model = BERT(tiny_config())
    ids = np.array([[1, 2, 3]])
    with pytest.raises(TypeError, match="integer"):
        model(ids.astype(np.float32))
    with pytest.raises(ValueError, match="2-D"):
        model(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="token id 11 in input_ids is out of range for vocab_size"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="max_seq_len=9"):
        model(np.ones((1, 10), dtype=int))
    with pytest.raises(ValueError, match="head must be one of"):
        model(ids, head="nsp")
    with pytest.raises(ValueError, match="token type 3 is out of range for type_vocab_size 3"):
        model(ids, token_type_ids=np.array([[0, 3, 1]]))
    with pytest.raises(ValueError, match="token_type_ids must have the shape"):
        model(ids, token_type_ids=np.array([[0, 1]]))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(ids, attention_mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match="only 0"):
        model(ids, attention_mask=np.array([[1, 2, 1]]))
    with pytest.raises(ValueError, match="label 11 is out of range"):
        model(ids, labels=np.array([[1, 11, -100]]))
    with pytest.raises(ValueError, match="mlm labels must have the shape"):
        model(ids, labels=np.array([1]))
    with pytest.raises(ValueError, match="class label 3 is out of range for num_labels 3"):
        model(ids, labels=np.array([3]), head="classification")
    with pytest.raises(ValueError, match=r"class labels must have shape \(1,\)"):
        model(ids, labels=np.array([[0, 1, 2]]), head="classification")
    with pytest.raises(ValueError, match="multi-label"):
        model(ids, labels=np.array([0.0, 1.0]), head="classification")


def test_backward_errors():
    model = BERT(tiny_config())
    ids = np.array([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        model.backward()
    model(ids)
    with pytest.raises(RuntimeError, match="needs a loss"):
        model.backward()
    with pytest.raises(ValueError, match="dlogits must have shape"):
        model.backward(dlogits=np.zeros((1, 3, 5), dtype=np.float32))
    model(ids, labels=np.array([[1, 2, 3]]))
    model.backward()
    with pytest.raises(RuntimeError, match="or twice"):
        model.backward()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(n_layer=-1), "n_layer"),
        (dict(d_model=9), "d_model"),
        (dict(d_ff=0), "d_ff"),
        (dict(max_seq_len=1.5), "max_seq_len"),
        (dict(type_vocab_size=0), "type_vocab_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(activation="swish"), "activation"),
        (dict(init_std=-1.0), "init_std"),
        (dict(num_labels=0), "num_labels"),
        (dict(pad_token_id=11), "pad_token_id"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"BertConfig.{field}"):
        tiny_config(**overrides)


def test_model_needs_a_bert_config():
    with pytest.raises(TypeError, match="BertConfig"):
        BERT({"vocab_size": 10})
