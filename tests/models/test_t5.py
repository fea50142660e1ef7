"""T5: position buckets, maths against a plain reference, gradients, KV cache, training, errors."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from numpyllm.gradcheck import gradcheck_model
from numpyllm.models.t5 import T5, T5Config, shift_right
from numpyllm.models.t5_position_bias import RelativePositionBias, relative_position_bucket
from numpyllm.nn.norms import Dropout
from numpyllm.optim import AdamW

GRAD_TOL = 1e-6
# Finite-difference step. With O(1) random weights and unscaled attention scores the loss is
# sharply curved, and the O(h^4) truncation of the stencil at h = 1e-3 can reach 1e-5; at 1e-4
# it is far below round-off. The fixed seeds also keep relu's kinks out of the +-2h stencil.
STEP = 1e-4


def tiny_config(**overrides) -> T5Config:
    fields = dict(
        vocab_size=11,
        d_model=8,
        d_kv=3,
        d_ff=6,
        n_layer=2,
        n_decoder_layer=2,
        n_head=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=6,
        dropout=0.0,
    )
    fields.update(overrides)
    return T5Config(**fields)


def randomized(model: T5, rng: np.random.Generator) -> T5:
    """O(1) random values everywhere (norm weights around 1): no gradient hides behind a
    small initialisation, and the position-bias tables matter."""
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape)
        p.data[...] = 1.0 + 0.3 * noise if "norm" in name else 0.5 * noise
    return model


def float64_model(seed: int = 0, **overrides) -> T5:
    model = T5(tiny_config(**overrides), rng=np.random.default_rng(seed))
    model.astype(np.float64)
    return randomized(model, np.random.default_rng(seed + 1))


@lru_cache(maxsize=8)
def shared_model(feed_forward: str = "relu", tie: bool = True) -> T5:
    """One float64 model per variant, reused by the property tests (forward only)."""
    return float64_model(7, feed_forward=feed_forward, tie_word_embeddings=tie).eval()


def right_padding_mask(lengths, total: int) -> np.ndarray:
    """(B, total) mask, 1 for the first ``lengths[b]`` positions of row b."""
    return (np.arange(total)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


@st.composite
def small_configs(draw) -> T5Config:
    buckets = draw(st.integers(4, 12))
    return T5Config(
        vocab_size=draw(st.integers(3, 13)),
        d_model=draw(st.integers(2, 8)),
        d_kv=draw(st.integers(1, 4)),
        d_ff=draw(st.integers(1, 8)),
        n_layer=draw(st.integers(1, 2)),
        n_decoder_layer=draw(st.integers(1, 2)),
        n_head=draw(st.integers(1, 3)),
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=draw(st.integers(buckets // 2 + 1, 16)),
        dropout=0.0,
        feed_forward=draw(st.sampled_from(["relu", "gated-gelu"])),
        tie_word_embeddings=draw(st.booleans()),
    )


# ---- the bucket formula, one relative position at a time ------------------------------------
def reference_bucket(r: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5's bucket of relative position r = key - query, written out with scalars."""
    offset = 0
    n = num_buckets
    if bidirectional:
        n = num_buckets // 2
        if r > 0:
            offset = n
        distance = abs(r)
    else:
        distance = max(-r, 0)
    max_exact = n // 2
    if distance < max_exact:
        return offset + distance
    log_part = math.log(distance / max_exact) / math.log(max_distance / max_exact)
    return offset + min(n - 1, max_exact + int(log_part * (n - max_exact)))


def near_a_bucket_edge(r: int, bidirectional: bool, num_buckets: int, max_distance: int) -> bool:
    """True where the log formula lands (almost) on a whole number: the reference rounds in
    float32 there, so exact real arithmetic is not the right oracle."""
    n = num_buckets // 2 if bidirectional else num_buckets
    distance = abs(r) if bidirectional else max(-r, 0)
    max_exact = n // 2
    if distance < max_exact:
        return False
    value = math.log(distance / max_exact) / math.log(max_distance / max_exact) * (n - max_exact)
    return abs(value - round(value)) < 1e-4


@given(
    r=st.integers(-400, 400),
    bidirectional=st.booleans(),
    num_buckets=st.integers(4, 64),
    data=st.data(),
)
def test_bucket_matches_the_scalar_formula(r, bidirectional, num_buckets, data):
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    max_distance = data.draw(st.integers(max_exact + 1, 300), label="max_distance")
    assume(not near_a_bucket_edge(r, bidirectional, num_buckets, max_distance))
    got = relative_position_bucket(np.array([r]), bidirectional, num_buckets, max_distance)
    assert got.dtype == np.int64
    assert int(got[0]) == reference_bucket(r, bidirectional, num_buckets, max_distance)


@given(bidirectional=st.booleans(), num_buckets=st.integers(4, 40), data=st.data())
def test_buckets_are_in_range_and_grow_with_distance(bidirectional, num_buckets, data):
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    max_distance = data.draw(st.integers(max_exact + 1, 200), label="max_distance")
    back = relative_position_bucket(-np.arange(500), bidirectional, num_buckets, max_distance)
    ahead = relative_position_bucket(np.arange(1, 500), bidirectional, num_buckets, max_distance)
    for buckets in (back, ahead):
        assert buckets.min() >= 0 and buckets.max() < num_buckets
        assert np.all(np.diff(buckets) >= 0)  # farther never maps to a nearer bucket
    if bidirectional:
        assert back.max() < num_buckets // 2 <= ahead.min()  # the two directions never share
    else:
        assert np.all(ahead == 0)  # the decoder sees no future: r > 0 counts as distance 0


def test_default_buckets_at_the_log_edges():
    # The default 32 buckets / max distance 128 at the distances where the log formula is a
    # whole number (16, 32, 64): the reference implementation's buckets.
    r = np.array([-200, -128, -127, -64, -63, -32, -31, -16, -15, -8, -7, -1, 0, 1, 7, 8,
                  15, 16, 31, 32, 63, 64, 127, 128, 200])  # fmt: skip
    encoder = [15, 15, 15, 14, 13, 12, 11, 10, 9, 8, 7, 1, 0, 17, 23, 24, 25, 26, 27, 28, 29,
               30, 31, 31, 31]  # fmt: skip
    decoder = [31, 31, 31, 26, 26, 21, 21, 16, 15, 8, 7, 1, 0] + [0] * 12
    np.testing.assert_array_equal(relative_position_bucket(r, True, 32, 128), encoder)
    np.testing.assert_array_equal(relative_position_bucket(r, False, 32, 128), decoder)


def test_position_bias_lookup_offset_and_scatter_add(rng):
    table = RelativePositionBias(6, 9, n_head=3, bidirectional=False, rng=rng)
    table.astype(np.float64)
    bias = table(4, 7, offset=3)  # queries at positions 3..6, keys 0..6
    assert bias.shape == (1, 3, 4, 7)
    for i in range(4):
        for j in range(7):
            expected = table.weight.data[reference_bucket(j - (i + 3), False, 6, 9)]
            np.testing.assert_array_equal(bias[0, :, i, j], expected)
    np.testing.assert_array_equal(table(1, 7, offset=6), table(7, 7)[:, :, -1:])  # one new query

    table(4, 7, offset=3)
    dbias = rng.standard_normal((2, 3, 4, 7))  # a batch axis, summed away
    table.backward(dbias)
    expected = np.zeros_like(table.weight.data)
    np.add.at(expected, table.buckets(4, 7, 3), dbias.sum(0).transpose(1, 2, 0))
    np.testing.assert_allclose(table.weight.grad, expected, rtol=1e-12, atol=1e-12)


# ---- a plain reference forward: loops over batch, heads and layers, HF's formulas ----------
def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_forward(model: T5, input_ids, decoder_input_ids, attention_mask=None,
                      decoder_attention_mask=None):  # fmt: skip
    """(logits, decoder hidden states, encoder output), masked scores set to -1e9."""
    cfg = model.config
    p = {name: param.data for name, param in model.named_parameters()}
    h_dim = cfg.d_kv
    batch, t_enc = input_ids.shape
    t_dec = decoder_input_ids.shape[1]
    enc_keep = np.ones((batch, t_enc), bool) if attention_mask is None else attention_mask != 0
    dec_keep = (
        np.ones((batch, t_dec), bool) if decoder_attention_mask is None
        else decoder_attention_mask != 0
    )  # fmt: skip

    def rms(x, w):
        return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.layer_norm_eps)

    def attention(prefix, xq, xkv, keep, table, bidirectional, causal):
        out = np.zeros((batch, xq.shape[1], cfg.n_head * h_dim))
        for b in range(batch):
            for head in range(cfg.n_head):
                cols = slice(head * h_dim, (head + 1) * h_dim)
                q = xq[b] @ p[f"{prefix}.q_proj.weight"][:, cols]
                k = xkv[b] @ p[f"{prefix}.k_proj.weight"][:, cols]
                v = xkv[b] @ p[f"{prefix}.v_proj.weight"][:, cols]
                scores = q @ k.T  # no 1/sqrt(d_kv)
                for i in range(scores.shape[0]):
                    for j in range(scores.shape[1]):
                        if table is not None:
                            bucket = reference_bucket(
                                j - i, bidirectional, cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance,
                            )  # fmt: skip
                            scores[i, j] += table[bucket, head]
                        if not keep[b, j] or (causal and j > i):
                            scores[i, j] = -1e9
                out[b, :, cols] = _softmax(scores) @ v
        return out @ p[f"{prefix}.o_proj.weight"]

    def ffn(prefix, x):
        h = x @ p[f"{prefix}.fc_in.weight"]
        if cfg.gated:
            h = _gelu_tanh(h) * (x @ p[f"{prefix}.fc_gate.weight"])
        else:
            h = np.maximum(h, 0.0)
        return h @ p[f"{prefix}.fc_out.weight"]

    x = p["shared.weight"][input_ids]
    table = p["encoder.relative_attention_bias.weight"]
    for i in range(cfg.n_layer):
        pre = f"encoder.blocks.{i}"
        h = rms(x, p[f"{pre}.self_attn_norm.weight"])
        x = x + attention(f"{pre}.self_attn", h, h, enc_keep, table, True, False)
        x = x + ffn(f"{pre}.ffn", rms(x, p[f"{pre}.ffn_norm.weight"]))
    enc = rms(x, p["encoder.final_norm.weight"])

    y = p["shared.weight"][decoder_input_ids]
    table = p["decoder.relative_attention_bias.weight"]
    for i in range(cfg.n_decoder_layer):
        pre = f"decoder.blocks.{i}"
        h = rms(y, p[f"{pre}.self_attn_norm.weight"])
        y = y + attention(f"{pre}.self_attn", h, h, dec_keep, table, False, True)
        h = rms(y, p[f"{pre}.cross_attn_norm.weight"])
        y = y + attention(f"{pre}.cross_attn", h, enc, enc_keep, None, False, False)
        y = y + ffn(f"{pre}.ffn", rms(y, p[f"{pre}.ffn_norm.weight"]))
    hidden = rms(y, p["decoder.final_norm.weight"])
    if cfg.tie_word_embeddings:
        logits = (hidden * cfg.d_model**-0.5) @ p["shared.weight"].T
    else:
        logits = hidden @ p["lm_head.weight"]
    return logits, hidden, enc


@given(config=small_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_forward_matches_the_plain_reference(config, seed, data):
    rng = np.random.default_rng(seed)
    model = randomized(T5(config, rng=rng).astype(np.float64), rng).eval()
    batch = data.draw(st.integers(1, 3), label="batch")
    t_enc = data.draw(st.integers(1, 6), label="t_enc")
    t_dec = data.draw(st.integers(1, 5), label="t_dec")
    ids = rng.integers(0, config.vocab_size, (batch, t_enc))
    dec = rng.integers(0, config.vocab_size, (batch, t_dec))
    mask = right_padding_mask(rng.integers(1, t_enc + 1, batch), t_enc)  # >= 1 real token
    dec_mask = right_padding_mask(rng.integers(1, t_dec + 1, batch), t_dec)
    out = model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    logits, hidden, enc = reference_forward(model, ids, dec, mask, dec_mask)
    np.testing.assert_allclose(out.encoder_hidden_states, enc, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out.hidden_states, hidden, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-9, atol=1e-10)
    assert out.logits.shape == (batch, t_dec, config.vocab_size)


def test_labels_give_shifted_decoder_inputs_and_an_unshifted_loss():
    model = shared_model()
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 11, (2, 5))
    labels = rng.integers(0, 11, (2, 4))
    labels[0, 3] = labels[1, 1] = -100
    out = model(ids, labels=labels)
    dec = shift_right(labels, model.config.decoder_start_token_id, model.config.pad_token_id)
    same = model(ids, decoder_input_ids=dec)
    np.testing.assert_array_equal(out.logits, same.logits)
    # the loss compares position t's logits with labels[t] (no shift), skipping -100
    logp = out.logits - np.log(np.exp(out.logits).sum(-1, keepdims=True))
    keep = labels != -100
    expected = -np.mean(logp[keep, labels[keep]])
    assert out.loss == pytest.approx(expected, rel=1e-12)


@given(
    labels=st.lists(
        st.lists(st.integers(-1, 20).map(lambda v: -100 if v < 0 else v), min_size=1, max_size=6),
        min_size=1,
        max_size=3,
    ).filter(lambda rows: len({len(r) for r in rows}) == 1),
    start=st.integers(0, 20),
    pad=st.integers(0, 20),
)
def test_shift_right(labels, start, pad):
    labels = np.array(labels, dtype=np.int64)
    original = labels.copy()
    shifted = shift_right(labels, start, pad)
    assert shifted.shape == labels.shape and shifted.dtype == labels.dtype
    for row, source in zip(shifted, labels):
        assert row[0] == start
        for t in range(1, len(row)):
            assert row[t] == (pad if source[t - 1] == -100 else source[t - 1])
    np.testing.assert_array_equal(labels, original)  # the input is left alone
    assert not np.any(shifted == -100)


# ---- gradients ---------------------------------------------------------------------------
def _gradcheck_inputs(rng: np.random.Generator, vocab: int = 11):
    ids = rng.integers(0, vocab, (2, 5))
    mask = right_padding_mask([5, 3], 5)  # the second example has two padding tokens
    labels = rng.integers(0, vocab, (2, 4))
    labels[0, 2] = labels[1, 3] = -100
    return ids, mask, labels


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
@pytest.mark.parametrize("tie", [True, False])
def test_gradcheck_whole_model(feed_forward, tie):
    model = float64_model(1, feed_forward=feed_forward, tie_word_embeddings=tie).eval()
    ids, mask, labels = _gradcheck_inputs(np.random.default_rng(2))

    def loss_fn() -> float:
        return model(ids, labels=labels, attention_mask=mask).loss

    errors = gradcheck_model(model, loss_fn, np.random.default_rng(3), samples_per_tensor=2, h=STEP)
    assert set(errors) == {name for name, _ in model.named_parameters()}
    assert ("lm_head.weight" in errors) == (not tie)
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRAD_TOL, (worst, errors[worst])


class _DlogitsLoss:
    """Adapter for gradcheck_model: loss = sum(logits * G), backward from dlogits = G."""

    def __init__(self, model: T5, call, g: np.ndarray) -> None:
        self.model, self.call, self.g = model, call, g

    def __call__(self) -> float:
        return float(np.sum(self.call().logits * self.g))

    def named_parameters(self):
        return self.model.named_parameters()

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def backward(self) -> None:
        self.model.backward(dlogits=self.g)


def test_gradcheck_from_dlogits_with_decoder_padding_and_dropout():
    """Training mode with dropout > 0 (the masks replayed on every call by reseeding each
    dropout layer), a decoder padding mask, and a random upstream dlogits."""
    model = float64_model(4, n_layer=1, n_decoder_layer=2, dropout=0.3, feed_forward="gated-gelu")
    model.train()
    rng = np.random.default_rng(5)
    ids, mask, _ = _gradcheck_inputs(rng)
    dec = rng.integers(0, 11, (2, 4))
    dec_mask = right_padding_mask([4, 2], 4)
    g = rng.standard_normal((2, 4, 11))
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]

    def call():
        for i, layer in enumerate(dropouts):
            layer.rng = np.random.default_rng(i)
        return model(ids, attention_mask=mask, decoder_input_ids=dec,
                     decoder_attention_mask=dec_mask)  # fmt: skip

    probe = _DlogitsLoss(model, call, g)
    errors = gradcheck_model(probe, probe, np.random.default_rng(6), samples_per_tensor=2, h=STEP)
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRAD_TOL, (worst, errors[worst])
    training_logits = call().logits
    model.eval()
    assert not np.allclose(training_logits, call().logits)  # the dropout was really on


def test_gradients_accumulate_and_backward_is_once_per_forward():
    model = float64_model(2).eval()
    ids, mask, labels = _gradcheck_inputs(np.random.default_rng(0))
    model.zero_grad()
    model(ids, labels=labels, attention_mask=mask)
    model.backward()
    first = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert all(np.any(g != 0) for g in first.values())
    with pytest.raises(RuntimeError, match="forward"):
        model.backward()
    model(ids, labels=labels, attention_mask=mask)
    model.backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * first[name], rtol=1e-12, err_msg=name)


# ---- properties ----------------------------------------------------------------------------
@given(
    variant=st.sampled_from([("relu", True), ("gated-gelu", False)]),
    t_dec=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_decoder_is_causal(variant, t_dec, seed, data):
    model = shared_model(*variant)
    rng = np.random.default_rng(seed)
    t = data.draw(st.integers(0, t_dec - 2), label="t")
    ids = rng.integers(0, 11, (2, 4))
    dec = rng.integers(0, 11, (2, t_dec))
    changed = dec.copy()
    changed[:, t + 1 :] = (dec[:, t + 1 :] + rng.integers(1, 11, (2, t_dec - t - 1))) % 11
    before = model(ids, decoder_input_ids=dec).logits
    after = model(ids, decoder_input_ids=changed).logits
    np.testing.assert_allclose(after[:, : t + 1], before[:, : t + 1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(after[:, t + 1 :], before[:, t + 1 :])


@given(length=st.integers(1, 5), extra=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_encoder_padding_is_invisible(length, extra, seed):
    model = shared_model("gated-gelu", True)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 11, (1, length))
    dec = rng.integers(0, 11, (1, 3))
    alone = model(ids, decoder_input_ids=dec)
    padded_ids = np.concatenate([ids, rng.integers(0, 11, (1, extra))], axis=1)
    mask = right_padding_mask([length], length + extra)
    padded = model(padded_ids, attention_mask=mask, decoder_input_ids=dec)
    np.testing.assert_allclose(padded.logits, alone.logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        padded.encoder_hidden_states[:, :length], alone.encoder_hidden_states, rtol=1e-10,
        atol=1e-12,
    )  # fmt: skip


@given(seed=st.integers(0, 2**16), variant=st.sampled_from([("relu", False), ("gated-gelu", True)]))
def test_batch_equals_examples_one_by_one(seed, variant):
    model = shared_model(*variant)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 11, (3, 5))
    mask = right_padding_mask(rng.integers(1, 6, 3), 5)
    labels = rng.integers(0, 11, (3, 4))
    batch = model(ids, labels=labels, attention_mask=mask)
    for b in range(3):
        single = model(ids[b : b + 1], labels=labels[b : b + 1], attention_mask=mask[b : b + 1])
        np.testing.assert_allclose(batch.logits[b : b + 1], single.logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    model = T5(tiny_config(dropout=0.1), rng=np.random.default_rng(0)).astype(dtype)
    ids, mask, labels = _gradcheck_inputs(np.random.default_rng(1))
    out = model(ids, labels=labels, attention_mask=mask)  # training mode: dropout on
    assert isinstance(out.loss, float) and np.isfinite(out.loss)
    for array in (out.logits, out.hidden_states, out.encoder_hidden_states):
        assert array.dtype == dtype
    model.zero_grad()
    model.backward()
    for name, p in model.named_parameters():
        assert p.data.dtype == dtype and p.grad.dtype == dtype, name
    enc = model.eval().encode(ids, mask)
    step = model(decoder_input_ids=labels[:, :1], encoder_outputs=enc, attention_mask=mask,
                 use_cache=True)  # fmt: skip
    assert step.logits.dtype == dtype
    for (k, v), (ck, cv) in step.past_key_values:
        assert k.dtype == v.dtype == ck.dtype == cv.dtype == dtype


# ---- generation path --------------------------------------------------------------------
@pytest.mark.parametrize("variant", [("relu", True), ("gated-gelu", False)])
def test_kv_cache_equals_the_full_decoder_pass(variant):
    model = shared_model(*variant)
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 11, (2, 6))
    mask = right_padding_mask([6, 4], 6)
    dec = rng.integers(0, 11, (2, 7))
    dec_mask = right_padding_mask([7, 5], 7)
    full = model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)

    enc = model.encode(ids, mask)
    np.testing.assert_array_equal(enc, full.encoder_hidden_states)
    # a prompt of 2 tokens at once, then one token at a time
    out = model(decoder_input_ids=dec[:, :2], encoder_outputs=enc, attention_mask=mask,
                decoder_attention_mask=dec_mask[:, :2], use_cache=True)  # fmt: skip
    logits = [out.logits]
    past = out.past_key_values
    cross = [layer[1] for layer in past]
    for t in range(2, 7):
        out = model(decoder_input_ids=dec[:, t : t + 1], encoder_outputs=enc,
                    attention_mask=mask, decoder_attention_mask=dec_mask[:, : t + 1],
                    past_key_values=past, use_cache=True)  # fmt: skip
        past = out.past_key_values
        logits.append(out.logits)
        for layer, first in zip(past, cross):
            assert layer[1][0] is first[0] and layer[1][1] is first[1]  # projected once
            assert layer[0][0].shape == (2, model.config.n_head, t + 1, model.config.d_kv)
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full.logits, rtol=1e-10, atol=1e-12)
    assert out.encoder_hidden_states is enc
    with pytest.raises(RuntimeError, match="inference only"):
        model.backward(dlogits=np.ones_like(out.logits))


def test_encoder_outputs_skip_the_encoder_and_the_gradient_stops_there():
    model = float64_model(3).eval()
    ids, mask, labels = _gradcheck_inputs(np.random.default_rng(4))
    whole = model(ids, labels=labels, attention_mask=mask)
    enc = model.encode(ids, mask)
    model.zero_grad()
    decoder_only = model(labels=labels, encoder_outputs=enc, attention_mask=mask)
    # equal up to rounding: a training forward splits its batch over the cores, encode does not
    np.testing.assert_allclose(decoder_only.logits, whole.logits, rtol=1e-12, atol=1e-12)
    assert decoder_only.loss == pytest.approx(whole.loss, rel=1e-12)
    model.backward()
    for name, p in model.named_parameters():
        assert np.any(p.grad != 0) == (not name.startswith("encoder.")), name


def test_tied_head_rescales_and_untied_head_does_not():
    tied = shared_model("relu", True)
    rng = np.random.default_rng(0)
    ids, dec = rng.integers(0, 11, (2, 3)), rng.integers(0, 11, (2, 4))
    out = tied(ids, decoder_input_ids=dec)
    expected = out.hidden_states @ tied.shared.weight.data.T * tied.config.d_model**-0.5
    np.testing.assert_allclose(out.logits, expected, rtol=1e-12)
    untied = shared_model("relu", False)
    out = untied(ids, decoder_input_ids=dec)
    np.testing.assert_allclose(out.logits, out.hidden_states @ untied.lm_head.weight.data)


# ---- structure and initialisation ---------------------------------------------------------
def test_parameter_names_and_shapes():
    cfg = tiny_config(n_layer=1, n_decoder_layer=2, feed_forward="gated-gelu", d_kv=5)
    names = {name: p.shape for name, p in T5(cfg).named_parameters()}
    d, inner, ff, nb, heads = 8, 2 * 5, 6, 8, 2
    expected = {"shared.weight": (11, d)}
    for stack, n_blocks in (("encoder", 1), ("decoder", 2)):
        expected[f"{stack}.relative_attention_bias.weight"] = (nb, heads)
        expected[f"{stack}.final_norm.weight"] = (d,)
        attentions = ["self_attn"] + (["cross_attn"] if stack == "decoder" else [])
        for i in range(n_blocks):
            block = f"{stack}.blocks.{i}"
            for attn in attentions:
                for proj in "qkv":
                    expected[f"{block}.{attn}.{proj}_proj.weight"] = (d, inner)
                expected[f"{block}.{attn}.o_proj.weight"] = (inner, d)
                expected[f"{block}.{attn}_norm.weight"] = (d,)
            expected[f"{block}.ffn.fc_in.weight"] = (d, ff)
            expected[f"{block}.ffn.fc_gate.weight"] = (d, ff)
            expected[f"{block}.ffn.fc_out.weight"] = (ff, d)
            expected[f"{block}.ffn_norm.weight"] = (d,)
    assert names == expected
    untied = dict(T5(tiny_config(tie_word_embeddings=False)).named_parameters())
    assert untied["lm_head.weight"].shape == (d, 11)
    assert "encoder.blocks.0.ffn.fc_gate.weight" not in untied  # relu: no gate


def test_initialisation_scales():
    cfg = T5Config(vocab_size=300, d_model=64, d_kv=16, d_ff=256, n_layer=1, n_head=8,
                   tie_word_embeddings=False, init_factor=0.5)  # fmt: skip
    params = dict(T5(cfg, rng=np.random.default_rng(0)).named_parameters())
    f, d = 0.5, 64
    expected_std = {
        "shared.weight": f,
        "lm_head.weight": f,
        "encoder.blocks.0.self_attn.q_proj.weight": f * (d * 16) ** -0.5,
        "decoder.blocks.0.cross_attn.k_proj.weight": f * d**-0.5,
        "decoder.blocks.0.self_attn.v_proj.weight": f * d**-0.5,
        "encoder.blocks.0.self_attn.o_proj.weight": f * (8 * 16) ** -0.5,
        "decoder.blocks.0.ffn.fc_in.weight": f * d**-0.5,
        "decoder.blocks.0.ffn.fc_out.weight": f * 256**-0.5,
    }
    for name, std in expected_std.items():
        assert params[name].data.std() == pytest.approx(std, rel=0.1), name
    assert params["encoder.final_norm.weight"].data.tolist() == [1.0] * d
    assert params["shared.weight"].dtype == np.float32


# ---- training -----------------------------------------------------------------------------
def test_overfits_one_batch():
    cfg = T5Config(vocab_size=12, d_model=16, d_kv=8, d_ff=32, n_layer=1, n_head=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   dropout=0.0)  # fmt: skip
    model = T5(cfg, rng=np.random.default_rng(1))
    rng = np.random.default_rng(2)
    ids = rng.integers(2, 12, (4, 6))
    labels = rng.integers(2, 12, (4, 5))
    labels[:, -1] = cfg.eos_token_id
    mask = right_padding_mask([6, 6, 4, 5], 6)
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        losses.append(model(ids, labels=labels, attention_mask=mask).loss)
        if losses[-1] < 0.05:
            break
        model.backward()
        opt.step()
    assert losses[-1] < 0.05, losses[::20]


# ---- errors ---------------------------------------------------------------------------
def test_input_errors():
    model = shared_model()
    ids = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="token id 11 in input_ids is out of range for vocab_size"):
        model(np.array([[1, 11]]), decoder_input_ids=ids[:1])
    with pytest.raises(ValueError, match="token id -1 in decoder_input_ids is out of range"):
        model(ids, decoder_input_ids=np.array([[0, -1], [0, 0]]))
    with pytest.raises(TypeError, match="integer"):
        model(ids.astype(np.float64), decoder_input_ids=ids)
    with pytest.raises(ValueError, match="2-D"):
        model(np.zeros(3, np.int64), decoder_input_ids=ids)
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model(ids)
    with pytest.raises(ValueError, match="input_ids, or encoder_outputs"):
        model(decoder_input_ids=ids)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, decoder_input_ids=ids, attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="use -100 to ignore"):
        model(ids, labels=np.array([[1, 2, -5], [0, 0, 0]]))
    with pytest.raises(ValueError, match="labels must match"):
        model(ids, labels=ids, decoder_input_ids=ids[:, :2])
    with pytest.raises(ValueError, match="batch size"):
        model(ids, decoder_input_ids=ids[:1])
    with pytest.raises(TypeError, match="dtype"):
        model(decoder_input_ids=ids, encoder_outputs=np.zeros((2, 3, 8), np.float32))
    with pytest.raises(ValueError, match="d_model=8"):
        model(decoder_input_ids=ids, encoder_outputs=np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="one entry per decoder block"):
        model(ids, decoder_input_ids=ids, past_key_values=())
    model(ids, decoder_input_ids=ids)
    with pytest.raises(RuntimeError, match="no labels"):
        model.backward()
    model(ids, decoder_input_ids=ids)
    with pytest.raises(ValueError, match="dlogits must have"):
        model.backward(dlogits=np.zeros((2, 3, 5)))
    with pytest.raises(TypeError, match="T5Config"):
        T5({"vocab_size": 11})


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(n_head=0), "n_head"),
        (dict(d_kv=2.5), "d_kv"),
        (dict(n_decoder_layer=-1), "n_decoder_layer"),
        (dict(dropout=1.0), "dropout"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(feed_forward="swiglu"), "feed_forward"),
        (dict(feed_forward="gated-gelu-x"), "feed_forward"),
        (dict(feed_forward="double-relu"), "feed_forward"),
        (dict(relative_attention_num_buckets=3), "relative_attention_num_buckets"),
        (dict(relative_attention_max_distance=4), "relative_attention_max_distance"),
        (dict(pad_token_id=11), "pad_token_id"),
        (dict(decoder_start_token_id=-1), "decoder_start_token_id"),
        (dict(init_factor=0.0), "init_factor"),
    ],
)
def test_config_errors(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_config_defaults_follow_t5_small():
    cfg = T5Config()
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.n_layer, cfg.n_head) == (
        32128, 512, 64, 2048, 6, 8,
    )  # fmt: skip
    assert cfg.n_decoder_layer == 6 and (cfg.activation, cfg.gated) == ("relu", False)
    assert (T5Config(feed_forward="gated-gelu").activation, T5Config().dropout) == ("gelu_new", 0.1)


def test_the_decoder_stack_needs_the_encoder_output():
    """Without encoder states a decoder block's cross-attention would attend to its own input."""
    model = float64_model()
    x = np.random.default_rng(0).standard_normal((1, 3, 8))
    with pytest.raises(ValueError, match="needs encoder_hidden_states"):
        model.decoder(x)
    out, _ = model.decoder(x, encoder_hidden_states=np.ones((1, 4, 8)))
    assert out.shape == (1, 3, 8)
