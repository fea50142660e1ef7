"""Llama: structure and names, maths against a plain reference, gradients, KV cache and
incremental decoder, the split batch and recomputation, generation, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyllm import Llama, LlamaConfig
from numpyllm.gradcheck import gradcheck_model
from numpyllm.optim import AdamW

GRAD_TOL = 1e-6


@st.composite
def small_llama_configs(draw) -> LlamaConfig:
    """Tiny configs over every head layout: multi-query, grouped, multi-head."""
    n_kv_head = draw(st.integers(1, 2))
    n_head = n_kv_head * draw(st.integers(1, 3))
    return LlamaConfig(
        vocab_size=draw(st.integers(2, 17)),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        d_model=n_head * draw(st.sampled_from([2, 4])),
        max_seq_len=draw(st.integers(3, 9)),
        n_kv_head=n_kv_head,
        d_ff=draw(st.integers(1, 9)),
        rope_theta=draw(st.sampled_from([10000.0, 5.0])),
        tie_word_embeddings=draw(st.booleans()),
        attention_bias=draw(st.booleans()),
        init_std=0.3,
    )


def tiny_config(**overrides) -> LlamaConfig:
    fields = dict(vocab_size=11, n_layer=2, n_head=4, d_model=8, max_seq_len=10, n_kv_head=2,
                  d_ff=12, init_std=0.3)  # fmt: skip
    fields.update(overrides)
    return LlamaConfig(**fields)


def float64_model(seed: int = 0, **overrides) -> Llama:
    model = Llama(tiny_config(**overrides), rng=np.random.default_rng(seed)).astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    for _, p in model.named_parameters():  # norm weights and biases away from 1 and 0
        p.data += 0.3 * rng.standard_normal(p.shape)
    return model


# ---- a plain reference: loops over layers and heads, transformers' formulas written out ----
def reference_logits(model: Llama, ids: np.ndarray) -> np.ndarray:
    cfg = model.config
    params = {n: p.data for n, p in model.named_parameters()}
    dh, G = cfg.head_dim, cfg.groups

    def rms(x, w):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.rms_norm_eps) * w

    def rotate(x):  # x (T, dh): the pair (i, i + dh/2) turned by t * theta^(-2i/dh)
        t = np.arange(len(x))[:, None]
        freq = cfg.rope_theta ** (-np.arange(0, dh, 2) / dh)
        c, s = np.cos(t * freq), np.sin(t * freq)
        a, b = x[:, : dh // 2], x[:, dh // 2 :]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)

    def proj(x, name):
        y = x @ params[name + ".weight"]
        return y + params[name + ".bias"] if name + ".bias" in params else y

    x = params["model.embed_tokens.weight"][ids]  # (B, T, d)
    T = ids.shape[1]
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        h = rms(x, params[p + "input_layernorm.weight"])
        q, k, v = (proj(h, p + f"self_attn.{n}_proj") for n in "qkv")
        heads = []
        for b in range(len(ids)):
            row = []
            for head in range(cfg.n_head):
                kv = head // G  # the shared key/value head of this query head
                qh = rotate(q[b, :, head * dh : (head + 1) * dh])
                kh = rotate(k[b, :, kv * dh : (kv + 1) * dh])
                scores = qh @ kh.T / np.sqrt(dh) + np.triu(np.full((T, T), -np.inf), 1)
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                row.append(probs / probs.sum(-1, keepdims=True) @ v[b, :, kv * dh : (kv + 1) * dh])
            heads.append(np.concatenate(row, axis=-1))
        x = x + proj(np.stack(heads), p + "self_attn.o_proj")
        h = rms(x, params[p + "post_attention_layernorm.weight"])
        gate, up = proj(h, p + "mlp.gate_proj"), proj(h, p + "mlp.up_proj")
        x = x + proj(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj")
    h = rms(x, params["model.norm.weight"])
    head = params.get("lm_head.weight", params["model.embed_tokens.weight"].T)
    return h @ head


# ------------------------------------------------------------------------------ structure
def test_parameter_names_are_transformers_names():
    model = Llama(tiny_config(n_layer=1, attention_bias=True))
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes == {
        "model.embed_tokens.weight": (11, 8),
        "model.layers.0.input_layernorm.weight": (8,),
        "model.layers.0.self_attn.q_proj.weight": (8, 8),
        "model.layers.0.self_attn.q_proj.bias": (8,),
        "model.layers.0.self_attn.k_proj.weight": (8, 4),  # 2 key/value heads of 2
        "model.layers.0.self_attn.k_proj.bias": (4,),
        "model.layers.0.self_attn.v_proj.weight": (8, 4),
        "model.layers.0.self_attn.v_proj.bias": (4,),
        "model.layers.0.self_attn.o_proj.weight": (8, 8),
        "model.layers.0.post_attention_layernorm.weight": (8,),
        "model.layers.0.mlp.gate_proj.weight": (8, 12),
        "model.layers.0.mlp.up_proj.weight": (8, 12),
        "model.layers.0.mlp.down_proj.weight": (12, 8),
        "model.norm.weight": (8,),
        "lm_head.weight": (8, 11),
    }
    tied = Llama(tiny_config(tie_word_embeddings=True))
    assert "lm_head.weight" not in dict(tied.named_parameters())


def test_config_defaults():
    cfg = LlamaConfig(vocab_size=5, n_layer=1, n_head=4, d_model=64, max_seq_len=8)
    assert cfg.n_kv_head == 4 and cfg.d_ff == 176  # 8/3 * 64 = 170.7, up to a multiple of 8
    assert cfg.rope_theta == 10000.0 and not cfg.tie_word_embeddings and not cfg.attention_bias


@pytest.mark.parametrize("overrides", [dict(tie_word_embeddings=True, attention_bias=True),
                                       dict(n_kv_head=1), dict(n_kv_head=4, rope_theta=7.0)])
def test_forward_matches_reference(overrides):
    model = float64_model(**overrides)
    ids = np.random.default_rng(0).integers(0, 11, (2, 7))
    np.testing.assert_allclose(model(ids).logits, reference_logits(model, ids), atol=1e-12)


def test_loss_is_transformers_shifted_mean_ignoring_minus_100():
    model = float64_model()
    ids = np.random.default_rng(1).integers(0, 11, (2, 6))
    labels = ids.copy()
    labels[0, 3] = -100
    out = model(ids, labels=labels)
    logp = out.logits - np.log(np.exp(out.logits).sum(-1, keepdims=True))
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(5)
             if labels[b, t + 1] != -100]  # fmt: skip
    assert out.loss == pytest.approx(np.mean(terms), rel=1e-12)


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("overrides", [dict(), dict(n_kv_head=1, tie_word_embeddings=True),
                                       dict(attention_bias=True, n_kv_head=4)])
def test_gradcheck_with_labels_and_padding(overrides):
    model = float64_model(**overrides)
    model.num_threads = 1
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 11, (2, 6))
    mask = np.ones_like(ids)
    mask[0, :2] = 0  # left padding
    labels = np.where(rng.random(ids.shape) < 0.2, -100, ids)
    errors = gradcheck_model(model, lambda: model(ids, labels=labels, attention_mask=mask).loss)
    assert max(errors.values()) < GRAD_TOL, errors


def test_gradcheck_from_dlogits():
    model = float64_model()
    ids = np.random.default_rng(3).integers(0, 11, (1, 5))
    dlogits = np.random.default_rng(4).standard_normal((1, 5, 11))
    model.zero_grad()
    model(ids)
    model.backward(dlogits)
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        i = np.unravel_index(np.argmax(np.abs(grads[name])), p.shape)
        old = p.data[i]
        values = []
        for step in (-1e-5, 1e-5):
            p.data[i] = old + step
            values.append(np.sum(model(ids).logits * dlogits))
        p.data[i] = old
        assert (values[1] - values[0]) / 2e-5 == pytest.approx(grads[name][i], rel=1e-6, abs=1e-9)


@settings(max_examples=10)
@given(config=small_llama_configs(), seed=st.integers(0, 2**31), data=st.data())
def test_causality_and_batch_independence(config, seed, data):
    model = Llama(config, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    T = data.draw(st.integers(2, config.max_seq_len))
    ids = rng.integers(0, config.vocab_size, (2, T))
    cut = data.draw(st.integers(1, T - 1))
    changed = ids.copy()
    changed[0, cut:] = rng.integers(0, config.vocab_size, T - cut)
    a, b = model(ids).logits, model(changed).logits
    np.testing.assert_allclose(a[0, :cut], b[0, :cut], rtol=1e-5, atol=1e-6)  # the past only
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)  # row 1 untouched


def test_split_batch_and_recomputation_give_the_same_gradients():
    model = float64_model()
    ids = np.random.default_rng(5).integers(0, 11, (3, 8))
    results = []
    for threads, recompute in [(1, False), (2, False), (3, True)]:
        model.num_threads, model.recompute_activations = threads, recompute
        model.zero_grad()
        out = model(ids, labels=ids)  # a split forward's parts write into one logits buffer
        model.backward()
        results.append((out, {n: p.grad.copy() for n, p in model.named_parameters()}))
    for out, grads in results[1:]:
        assert out.loss == pytest.approx(results[0][0].loss, rel=1e-13)
        np.testing.assert_allclose(out.logits, results[0][0].logits, rtol=1e-12, atol=1e-13)
        for name, g in grads.items():
            np.testing.assert_allclose(g, results[0][1][name], rtol=1e-10, atol=1e-13)


def test_overfits_one_batch_with_adamw():
    model = Llama(tiny_config(init_std=0.02))
    ids = np.random.default_rng(6).integers(0, 11, (2, 10))
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(60):
        loss = model(ids, labels=ids).loss
        first = loss if first is None else first
        opt.zero_grad()
        model.backward()
        opt.step()
    assert loss < 0.2 * first


# ------------------------------------------------------------------------- KV cache, decoding
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_cache_and_decoder_equal_the_full_forward(dtype, tol, n_kv_head):
    model = float64_model(n_kv_head=n_kv_head).astype(dtype)
    ids = np.random.default_rng(7).integers(0, 11, (2, 9))
    full = model(ids).logits
    out = model(ids[:, :4], use_cache=True)
    for t in range(4, 9):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
        np.testing.assert_allclose(out.logits[:, -1], full[:, t], atol=tol)
    assert out.past_key_values[0][0].shape == (2, n_kv_head, 9, 2)  # H_kv heads cached
    with model.incremental_decoder(batch=2) as decoder:
        assert decoder.keys[0].shape == (2, n_kv_head, 10, 2)
        np.testing.assert_allclose(decoder.step(ids[:, :5]), full[:, 4], atol=tol)
        for t in range(5, 9):
            logits = decoder.step(ids[:, t : t + 1])
            assert logits.dtype == dtype
            np.testing.assert_allclose(logits, full[:, t], atol=tol)


def test_gqa_cache_is_smaller_by_the_group_size():
    sizes = {kv: Llama(tiny_config(n_kv_head=kv)).incremental_decoder().cache_bytes
             for kv in (1, 2, 4)}  # fmt: skip
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1]


def test_generate_greedy_and_sampling():
    model = float64_model()
    prompt = np.array([[1, 2, 3]])
    greedy = model.generate(prompt, max_new_tokens=5)
    ids = prompt
    for _ in range(5):  # greedy by hand, without a cache
        ids = np.concatenate([ids, model(ids).logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, ids)
    kwargs = dict(max_new_tokens=6, do_sample=True, temperature=0.7, top_k=4, top_p=0.9)
    a = model.generate(prompt, seed=3, **kwargs)
    np.testing.assert_array_equal(a, model.generate(prompt, seed=3, **kwargs))
    assert a.shape == (1, 9) and (a < 11).all()
    assert model.generate(prompt, max_new_tokens=20, crop_context=True).shape == (1, 23)
    with pytest.raises(ValueError, match="context length"):
        model.generate(prompt, max_new_tokens=20)


def test_backward_after_cached_forward_is_refused():
    model = float64_model()
    model(np.array([[1, 2]]), use_cache=True)
    with pytest.raises(RuntimeError, match="inference only"):
        model.backward(np.zeros((1, 2, 11)))


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "overrides, field",
    [(dict(n_head=3), "divisible"), (dict(n_kv_head=3), "n_kv_head"), (dict(d_model=4, n_head=4),
     "even"), (dict(rope_theta=0.0), "rope_theta"), (dict(vocab_size=0), "vocab_size")],
)  # fmt: skip
def test_bad_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_bad_inputs_raise_as_gpt_does():
    model = Llama(tiny_config())
    with pytest.raises(TypeError, match="LlamaConfig"):
        Llama(object())
    with pytest.raises(ValueError, match=r"token id 11 .*vocab_size 11"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="2-D"):
        model(np.array([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        model(np.array([[1.0]]))
    with pytest.raises(ValueError, match="context length max_seq_len=10"):
        model(np.zeros((1, 11), dtype=np.int64))
    with pytest.raises(ValueError, match="labels must have the shape"):
        model(np.array([[1, 2]]), labels=np.array([[1, 2, 3, 4]]))
    with pytest.raises(ValueError, match="label 11 is out of range"):
        model(np.array([[1, 2]]), labels=np.array([[1, 11]]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(np.array([[1, 2]]), attention_mask=np.ones((1, 3)))
    with pytest.raises(ValueError, match="one \\(k, v\\) pair per layer"):
        model(np.array([[1]]), past_key_values=[(np.zeros((1, 2, 1, 2)),) * 2])
    with pytest.raises(ValueError, match="past_key_values entries"):
        model(np.array([[1]]), past_key_values=[(np.zeros((1, 4, 1, 2)),) * 2] * 2)
    with pytest.raises(RuntimeError, match="forward"):
        Llama(tiny_config()).backward()
    model(np.array([[1, 2]]))
    with pytest.raises(RuntimeError, match="labels"):
        model.backward()
    with pytest.raises(ValueError, match="dlogits must have shape"):
        model(np.array([[1, 2]]))
        model.backward(np.zeros((1, 3, 11)))


def test_lora_adapters_on_the_attention_projections():
    from numpyllm import peft

    model = float64_model()
    ids = np.random.default_rng(8).integers(0, 11, (2, 6))
    base = model(ids).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4,
                                                      target_modules=["q_proj", "v_proj"]))
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    # per layer: q (8 -> 8) and v (8 -> 4), each r (in + out)
    assert sum(p.size for p in trainable.values()) == 2 * 2 * ((8 + 8) + (8 + 4))
    out = lora(ids, labels=ids)
    np.testing.assert_allclose(out.logits, base, atol=1e-12)  # B = 0: the base model at first
    lora.backward()
    assert all(p.grad is not None and np.any(p.grad) for n, p in trainable.items() if "lora_B" in n)
