"""GPT: structure, maths against a plain reference, gradients, KV cache, training, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.gradcheck import gradcheck_model, numerical_gradient
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.nn.norms import Dropout
from numpyllm.optim import AdamW
from tests.models.strategies import small_gpt_configs

GRAD_TOL = 1e-6


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(vocab_size=11, n_layer=2, n_head=2, d_model=8, max_seq_len=10, dropout=0.0)
    fields.update(overrides)
    return GPTConfig(**fields)


def randomized(model: GPT, rng: np.random.Generator) -> GPT:
    """Give every parameter O(1) random values (LayerNorm weights around 1), so that
    gradients are far from zero and no term can hide behind a small initialisation."""
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            p.data[...] = 1.0 + 0.3 * noise
        else:
            p.data[...] = 0.4 * noise
    return model


def float64_model(seed: int = 0, **overrides) -> GPT:
    model = GPT(tiny_config(**overrides), rng=np.random.default_rng(seed))
    model.astype(np.float64)
    return randomized(model, np.random.default_rng(seed + 1))


def left_padding_mask(lengths: list[int], total: int) -> np.ndarray:
    """(B, total) mask with the real tokens at the end of each row."""
    return (np.arange(total)[None, :] >= total - np.asarray(lengths)[:, None]).astype(np.int64)


# ---- a plain reference forward: loops over layers and heads, HF's formulas written out ----
def _gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


REFERENCE_ACTIVATIONS = {
    "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "gelu": _gelu_erf,
    "relu": lambda x: np.maximum(x, 0.0),
}


def reference_forward(model: GPT, ids: np.ndarray, attention_mask=None):
    """Logits and final hidden states the slow, obvious way (masked scores set to a very
    negative finite number, as Hugging Face does)."""
    cfg = model.config
    p = {name: param.data for name, param in model.named_parameters()}
    B, T = ids.shape
    dh = cfg.d_model // cfg.n_head
    act = REFERENCE_ACTIVATIONS[cfg.activation]

    def layer_norm(x, w, b):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + cfg.layer_norm_eps) * w + b

    allowed = np.tril(np.ones((T, T), dtype=bool))[None].repeat(B, axis=0)  # (B, T, T)
    if attention_mask is not None:
        allowed &= attention_mask.astype(bool)[:, None, :]
    x = p["wte.weight"][ids] + p["wpe.weight"][:T]
    for i in range(cfg.n_layer):
        g = lambda name, i=i: p[f"h.{i}.{name}"]
        u = layer_norm(x, g("ln_1.weight"), g("ln_1.bias"))
        qkv = u @ g("attn.c_attn.weight") + g("attn.c_attn.bias")
        q, k, v = np.split(qkv, 3, axis=-1)  # GPT-2's order: queries, keys, values
        heads = []
        for h in range(cfg.n_head):
            cols = slice(h * dh, (h + 1) * dh)
            scores = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / math.sqrt(dh)
            scores = np.where(allowed, scores, -1e30)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            heads.append(weights @ v[..., cols])
        attn = np.concatenate(heads, axis=-1) @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        x = x + attn
        u = layer_norm(x, g("ln_2.weight"), g("ln_2.bias"))
        hidden = act(u @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias"))
        x = x + hidden @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
    final = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"])
    return final @ p["wte.weight"].T, final


# ---- structure --------------------------------------------------------------------------
def test_parameter_names_and_shapes_are_gpt2s():
    cfg = GPTConfig(vocab_size=50, n_layer=2, n_head=4, d_model=16, max_seq_len=24)
    d, f = 16, 64
    expected = {"wte.weight": (50, d), "wpe.weight": (24, d)}
    for i in range(2):
        expected.update(
            {
                f"h.{i}.ln_1.weight": (d,),
                f"h.{i}.ln_1.bias": (d,),
                f"h.{i}.attn.c_attn.weight": (d, 3 * d),
                f"h.{i}.attn.c_attn.bias": (3 * d,),
                f"h.{i}.attn.c_proj.weight": (d, d),
                f"h.{i}.attn.c_proj.bias": (d,),
                f"h.{i}.ln_2.weight": (d,),
                f"h.{i}.ln_2.bias": (d,),
                f"h.{i}.mlp.c_fc.weight": (d, f),
                f"h.{i}.mlp.c_fc.bias": (f,),
                f"h.{i}.mlp.c_proj.weight": (f, d),
                f"h.{i}.mlp.c_proj.bias": (d,),
            }
        )
    expected.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    model = GPT(cfg)
    got = {name: p.shape for name, p in model.named_parameters()}
    assert got == expected
    assert list(got) == list(expected)  # GPT-2's order too
    assert model.num_parameters() == sum(math.prod(s) for s in expected.values())
    assert set(model.state_dict()) == set(expected)


def test_custom_d_ff():
    model = GPT(tiny_config(d_ff=12))
    params = dict(model.named_parameters())
    assert params["h.0.mlp.c_fc.weight"].shape == (8, 12)
    assert params["h.1.mlp.c_proj.weight"].shape == (12, 8)


def test_init_follows_gpt2():
    cfg = GPTConfig(vocab_size=300, n_layer=4, n_head=4, d_model=64, max_seq_len=200, init_std=0.02)
    model = GPT(cfg, rng=np.random.default_rng(3))
    residual_std = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        data = p.data
        assert data.dtype == np.float32, name
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            assert np.all(data == 1.0), name
        elif name.endswith("bias"):
            assert np.all(data == 0.0), name
        elif name.endswith("c_proj.weight"):
            assert abs(data.std() / residual_std - 1) < 0.06, name
            assert abs(data.mean()) < 0.1 * residual_std, name
        else:
            assert abs(data.std() / 0.02 - 1) < 0.06, name
            assert abs(data.mean()) < 0.1 * 0.02, name


def test_init_is_seeded_by_the_rng():
    a = GPT(tiny_config(), rng=np.random.default_rng(7)).state_dict()
    b = GPT(tiny_config(), rng=np.random.default_rng(7)).state_dict()
    c = GPT(tiny_config(), rng=np.random.default_rng(8)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["h.0.attn.c_attn.weight"], c["h.0.attn.c_attn.weight"])


def test_lm_head_is_tied_to_wte():
    model = GPT(tiny_config())
    names = [name for name, _ in model.named_parameters()]
    assert names.count("wte.weight") == 1
    assert not any("head" in name for name in names)
    ids = np.array([[1, 2, 3]])
    before = model(ids).logits
    # token 5 is not in the input: only the head sees it. (A constant shift would not show:
    # the LayerNorm output sums to zero over features.)
    model.wte.weight.data[5] += np.random.default_rng(0).standard_normal(8).astype(np.float32)
    after = model(ids).logits
    assert not np.allclose(before[..., 5], after[..., 5])
    np.testing.assert_array_equal(np.delete(before, 5, axis=-1), np.delete(after, 5, axis=-1))


# ---- forward maths ---------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "relu"])
def test_forward_matches_reference(activation):
    model = float64_model(activation=activation)
    ids = np.random.default_rng(1).integers(0, 11, size=(3, 7))
    out = model(ids)
    logits, hidden = reference_forward(model, ids)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.hidden_states, hidden, rtol=1e-10, atol=1e-12)
    assert out.logits.shape == (3, 7, 11)
    assert out.loss is None and out.past_key_values is None


def test_forward_with_padding_matches_reference_at_real_tokens():
    model = float64_model()
    ids = np.random.default_rng(2).integers(0, 11, size=(3, 6))
    mask = left_padding_mask([6, 4, 1], 6)
    mask[0, 5] = 0  # and one right-padded key
    out = model(ids, attention_mask=mask)
    logits, _ = reference_forward(model, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(out.logits[real], logits[real], rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(out.logits))


def test_loss_is_shifted_mean_cross_entropy_ignoring_minus_100():
    model = float64_model()
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 11, size=(2, 6))
    labels = ids.copy()
    labels[0, 3] = -100
    labels[1, 5] = -100
    labels[1, 0] = -100  # position 0 is never a target after the shift anyway
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1]
    targets = labels[:, 1:]
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    keep = targets != -100
    expected = -log_probs[keep, targets[keep]].mean()
    assert isinstance(out.loss, float)
    assert out.loss == pytest.approx(expected, rel=1e-12)


# ---- gradients -------------------------------------------------------------------------
def _check(model: GPT, loss_fn, seed: int = 0) -> None:
    errors = gradcheck_model(model, loss_fn, rng=np.random.default_rng(seed))
    assert len(errors) == len(model.parameters())
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRAD_TOL, (worst, errors[worst])


def test_gradcheck_with_labels_and_ignore_index():
    model = float64_model()
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 11, size=(2, 7))
    labels = rng.integers(0, 11, size=(2, 7))
    labels[0, 2] = labels[1, 6] = labels[1, 3] = -100
    _check(model, lambda: model(ids, labels=labels).loss)


def test_gradcheck_with_padding_mask():
    model = float64_model(seed=3)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 11, size=(3, 6))
    mask = left_padding_mask([6, 3, 4], 6)
    mask[2, 5] = 0  # right padding too
    labels = np.where(mask.astype(bool), ids, -100)
    _check(model, lambda: model(ids, labels=labels, attention_mask=mask).loss, seed=1)


def test_gradcheck_with_dropout_and_a_fixed_mask():
    """With the dropout generators reseeded before every forward the model is a fixed
    function of its parameters, so the backward through every dropout can be checked."""
    model = float64_model(seed=4, dropout=0.3)
    model.train()
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    assert len(dropouts) == 1 + 2 * model.config.n_layer
    ids = np.random.default_rng(7).integers(0, 11, size=(2, 5))

    def loss_fn():
        for seed, layer in enumerate(dropouts):
            layer.rng = np.random.default_rng(seed)
        return model(ids, labels=ids).loss

    _check(model, loss_fn, seed=2)


def test_gradcheck_from_dlogits():
    """backward(dlogits=G) is the gradient of sum(logits * G): this also reaches the last
    position, which the shifted loss never trains."""
    model = float64_model(seed=5)
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 11, size=(2, 5))
    dlogits = rng.standard_normal((2, 5, 11))

    class FromLogits:
        def zero_grad(self):
            model.zero_grad()

        def named_parameters(self):
            return model.named_parameters()

        def parameters(self):
            return model.parameters()

        def backward(self):
            model.backward(dlogits=dlogits)

    _check(FromLogits(), lambda: float(np.sum(model(ids).logits * dlogits)), seed=3)


def test_tied_wte_grad_is_embedding_plus_head_exactly():
    """Every element of wte.grad against finite differences; rows of tokens absent from the
    input get only the head's part, which must be non-zero."""
    model = float64_model(seed=6, vocab_size=7, d_model=4, n_layer=1)
    ids = np.array([[1, 2, 2, 4], [4, 0, 1, 1]])
    model.zero_grad()
    model(ids, labels=ids)
    model.backward()
    analytic = model.wte.weight.grad.copy()
    numeric = numerical_gradient(lambda: model(ids, labels=ids).loss, model.wte.weight.data)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-10)
    assert np.all(np.abs(analytic[[3, 5, 6]]) > 1e-6)  # head-only rows


def test_gradients_accumulate():
    model = float64_model()
    ids = np.random.default_rng(9).integers(0, 11, size=(2, 5))
    model.zero_grad()
    model(ids, labels=ids)
    model.backward()
    once = {name: p.grad.copy() for name, p in model.named_parameters()}
    model(ids, labels=ids)
    model.backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-12, err_msg=name)


# ---- properties ------------------------------------------------------------------------
@given(config=small_gpt_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_causality(config, seed, data):
    """Logits up to t do not depend on tokens after t."""
    model = GPT(config, rng=np.random.default_rng(seed)).astype(np.float64)
    rng = np.random.default_rng(seed)
    T = data.draw(st.integers(2, config.max_seq_len))
    t = data.draw(st.integers(0, T - 2))
    ids = rng.integers(0, config.vocab_size, size=(2, T))
    changed = ids.copy()
    changed[:, t + 1 :] = rng.integers(0, config.vocab_size, size=(2, T - t - 1))
    a, b = model(ids).logits, model(changed).logits
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-12)


@given(config=small_gpt_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_padded_tokens_are_invisible(config, seed, data):
    """Changing the ids under attention_mask == 0 leaves the logits of real tokens unchanged."""
    model = GPT(config, rng=np.random.default_rng(seed)).astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    B = data.draw(st.integers(1, 3))
    T = data.draw(st.integers(1, config.max_seq_len))
    mask = (rng.random((B, T)) < 0.6).astype(np.int64)
    ids = rng.integers(0, config.vocab_size, size=(B, T))
    repadded = np.where(mask == 1, ids, rng.integers(0, config.vocab_size, size=(B, T)))
    a = model(ids, attention_mask=mask).logits
    b = model(repadded, attention_mask=mask).logits
    real = mask.astype(bool)
    np.testing.assert_allclose(a[real], b[real], rtol=0, atol=1e-12)
    assert np.all(np.isfinite(a))


@given(config=small_gpt_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_batch_independence(config, seed, data):
    model = GPT(config, rng=np.random.default_rng(seed)).astype(np.float64)
    rng = np.random.default_rng(seed + 2)
    B = data.draw(st.integers(2, 4))
    T = data.draw(st.integers(1, config.max_seq_len))
    ids = rng.integers(0, config.vocab_size, size=(B, T))
    mask = left_padding_mask(list(rng.integers(1, T + 1, size=B)), T)
    batched = model(ids, attention_mask=mask).logits
    for b in range(B):
        alone = model(ids[b : b + 1], attention_mask=mask[b : b + 1]).logits
        np.testing.assert_allclose(batched[b : b + 1], alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    model = GPT(tiny_config()).astype(dtype)
    ids = np.random.default_rng(0).integers(0, 11, size=(2, 6))
    out = model(ids, labels=ids, attention_mask=left_padding_mask([6, 3], 6), use_cache=True)
    assert out.logits.dtype == dtype and out.hidden_states.dtype == dtype
    assert isinstance(out.loss, float)
    assert all(k.dtype == dtype and v.dtype == dtype for k, v in out.past_key_values)
    model.zero_grad()
    model.backward()
    for name, p in model.named_parameters():
        assert p.grad.dtype == dtype, name
        assert np.all(np.isfinite(p.grad)), name
        assert np.any(p.grad != 0), name


# ---- KV cache --------------------------------------------------------------------------
def _incremental_logits(model, ids, chunks, attention_mask=None):
    past, pieces, start = None, [], 0
    for size in chunks:
        stop = start + size
        mask = None if attention_mask is None else attention_mask[:, :stop]
        out = model(ids[:, start:stop], attention_mask=mask, past_key_values=past, use_cache=True)
        pieces.append(out.logits)
        past, start = out.past_key_values, stop
    return np.concatenate(pieces, axis=1), past


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_kv_cache_one_token_at_a_time_equals_one_call(dtype, tol):
    model = GPT(tiny_config(), rng=np.random.default_rng(1)).astype(dtype)
    randomized(model, np.random.default_rng(2))
    ids = np.random.default_rng(3).integers(0, 11, size=(2, 9))
    full = model(ids, use_cache=True)
    stepped, past = _incremental_logits(model, ids, [4, 1, 1, 1, 1, 1])
    assert stepped.dtype == dtype
    np.testing.assert_allclose(stepped, full.logits, rtol=0, atol=tol)
    assert len(past) == 2
    for (k, v), (k_full, v_full) in zip(past, full.past_key_values):
        assert k.shape == v.shape == (2, 2, 9, 4)  # (B, H, T, dh)
        np.testing.assert_allclose(k, k_full, rtol=0, atol=tol)
        np.testing.assert_allclose(v, v_full, rtol=0, atol=tol)


@given(seed=st.integers(0, 2**16), data=st.data())
def test_kv_cache_chunks_with_left_padding(seed, data):
    model = float64_model(seed=seed % 7)
    rng = np.random.default_rng(seed)
    T = data.draw(st.integers(2, 10))
    chunks = []
    while sum(chunks) < T:
        chunks.append(data.draw(st.integers(1, T - sum(chunks))))
    ids = rng.integers(0, 11, size=(2, T))
    mask = left_padding_mask([T, int(rng.integers(1, T + 1))], T)
    full = model(ids, attention_mask=mask).logits
    stepped, _ = _incremental_logits(model, ids, chunks, attention_mask=mask)
    np.testing.assert_allclose(stepped, full, rtol=0, atol=1e-10)


def test_backward_after_cached_forward_is_refused():
    model = GPT(tiny_config())
    ids = np.array([[1, 2, 3]])
    past = model(ids, use_cache=True).past_key_values
    model(np.array([[4, 5]]), labels=np.array([[4, 5]]), past_key_values=past)
    with pytest.raises(RuntimeError, match="past_key_values"):
        model.backward()


def test_positions_continue_after_the_cache():
    """A token fed after a cache of P tokens uses position P, not 0."""
    model = float64_model()
    ids = np.array([[3, 1, 4]])
    past = model(ids[:, :2], use_cache=True).past_key_values
    last = model(ids[:, 2:], past_key_values=past).logits
    np.testing.assert_allclose(last[:, 0], model(ids).logits[:, 2], rtol=0, atol=1e-12)
    # the cached call must read position 2 (a random change: LayerNorm ignores a constant one)
    model.wpe.weight.data[2] += np.random.default_rng(0).standard_normal(8)
    moved = model(ids[:, 2:], past_key_values=past).logits
    assert not np.allclose(moved, last)


# ---- training --------------------------------------------------------------------------
def test_overfits_one_batch_with_adamw():
    cfg = GPTConfig(vocab_size=16, n_layer=2, n_head=2, d_model=32, max_seq_len=12, dropout=0.0)
    model = GPT(cfg, rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 16, size=(4, 12))
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        losses.append(model(ids, labels=ids).loss)
        model.backward()
        opt.step()
    assert losses[0] > 2.0  # about log(16) at the start
    assert min(losses[-5:]) < 0.05, losses[-5:]


def test_dropout_is_active_in_training_only():
    model = GPT(tiny_config(dropout=0.5), rng=np.random.default_rng(0))
    ids = np.array([[1, 2, 3, 4]])
    model.train()
    assert not np.allclose(model(ids).logits, model(ids).logits)
    model.eval()
    np.testing.assert_array_equal(model(ids).logits, model(ids).logits)


def test_flop_estimate():
    cfg = GPTConfig(vocab_size=512, n_layer=4, n_head=4, d_model=128, max_seq_len=128)
    model = GPT(cfg)
    n = model.num_parameters() - 128 * 128
    assert model.estimate_flops_per_token() == 6 * n + 12 * 4 * 128 * 128
    assert model.estimate_flops_per_token(64) == 6 * n + 12 * 4 * 64 * 128


# ---- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"d_model": 10, "n_head": 4}, "divisible"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_head": -1}, "n_head"),
        ({"max_seq_len": 2.5}, "max_seq_len"),
        ({"d_ff": 0}, "d_ff"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
        ({"activation": "swish"}, "activation"),
        ({"init_std": 0.0}, "init_std"),
    ],
)
def test_bad_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_constructor_wants_a_config():
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"vocab_size": 3})


@pytest.mark.parametrize("bad", [-1, 11, 500])
def test_out_of_range_id(bad):
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match=rf"token id {bad} .*vocab_size 11"):
        model(np.array([[1, bad, 2]]))


def test_bad_input_ids():
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="2-D"):
        model(np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        model(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="at least one token"):
        model(np.zeros((1, 0), dtype=np.int64))


def test_too_long_sequence():
    model = GPT(tiny_config(max_seq_len=10))
    model(np.zeros((1, 10), dtype=np.int64))  # exactly the context is fine
    with pytest.raises(ValueError, match="context length max_seq_len=10"):
        model(np.zeros((1, 11), dtype=np.int64))
    past = model(np.zeros((1, 8), dtype=np.int64), use_cache=True).past_key_values
    model(np.zeros((1, 2), dtype=np.int64), past_key_values=past)
    with pytest.raises(ValueError, match="8 cached \\+ 3 new.*context length"):
        model(np.zeros((1, 3), dtype=np.int64), past_key_values=past)


def test_bad_labels_mask_and_cache():
    model = GPT(tiny_config())
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="labels must have the shape"):
        model(ids, labels=np.array([[1, 2]]))
    with pytest.raises(ValueError, match="label 11 is out of range"):
        model(ids, labels=np.array([[1, 11, 2]]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=np.ones((1, 4)))
    past = model(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="one \\(k, v\\) pair per layer"):
        model(ids, past_key_values=past[:1])
    with pytest.raises(ValueError, match="past_key_values entries"):
        model(np.array([[1], [2]]), past_key_values=past)  # cache is for batch 1


def test_backward_without_loss_or_forward():
    model = GPT(tiny_config())
    with pytest.raises(RuntimeError, match="forward"):
        model.backward()
    model(np.array([[1, 2]]))
    with pytest.raises(RuntimeError, match="labels"):
        model.backward()
    with pytest.raises(ValueError, match="dlogits must have shape"):
        model.backward(dlogits=np.zeros((1, 2, 3)))


def test_labels_one_longer_train_the_last_position_too():
    config = GPTConfig(vocab_size=13, n_layer=1, n_head=2, d_model=8, max_seq_len=6, dropout=0.0)
    model = GPT(config, rng=np.random.default_rng(0))
    window = np.random.default_rng(1).integers(0, 13, size=(2, 7))
    ids = window[:, :-1]
    out = model(ids, labels=window)
    # every position predicts the next token of the window, the last included
    logp = out.logits - np.log(np.exp(out.logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, window[:, 1:, None], axis=-1).mean()
    assert abs(out.loss - nll) < 1e-5
    model.backward()
    assert np.abs(model.wpe.weight.grad[-1]).sum() > 0  # the last position embedding learns
    model.zero_grad()
    model(ids, labels=ids)
    model.backward()
    assert not model.wpe.weight.grad[-1].any()  # equal-length labels never reach it
