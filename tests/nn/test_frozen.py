"""Frozen parameters (requires_grad = False): no gradient, no optimizer state, same other grads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyllm.functional import linear as functional_linear
from numpyllm.functional import norms as functional_norms
from numpyllm.models.bert import BERT, BertConfig
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.models.t5 import T5, T5Config
from numpyllm.nn.linear import Linear
from numpyllm.nn.norms import LayerNorm
from numpyllm.nn.parameter import Parameter
from numpyllm.optim import SGD, AdamW, clip_grad_norm, param_groups_for_weight_decay


def gpt() -> GPT:
    config = GPTConfig(vocab_size=11, n_layer=2, n_head=2, d_model=8, max_seq_len=10, dropout=0.0)
    return GPT(config, rng=np.random.default_rng(0)).astype(np.float64)


def bert() -> BERT:
    config = BertConfig(vocab_size=11, n_layer=2, n_head=2, d_model=8, d_ff=12, max_seq_len=9,
                        dropout=0.0)  # fmt: skip
    return BERT(config, rng=np.random.default_rng(0)).astype(np.float64)


def t5() -> T5:
    config = T5Config(vocab_size=11, d_model=8, d_kv=3, d_ff=6, n_layer=2, n_decoder_layer=2,
                      n_head=2, dropout=0.0)  # fmt: skip
    return T5(config, rng=np.random.default_rng(0)).astype(np.float64)


def run(model) -> None:
    ids = np.random.default_rng(1).integers(0, 11, size=(2, 6))
    model.zero_grad()
    model(ids, labels=ids)
    model.backward()


def test_parameter_flag_drops_and_restores_the_gradient():
    p = Parameter(np.ones((2, 3)))
    assert p.requires_grad and p.grad.shape == (2, 3)
    p.requires_grad = False
    assert p.grad is None
    p.zero_grad()  # harmless on a frozen parameter
    p.requires_grad = True
    assert np.array_equal(p.grad, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="True or False"):
        p.requires_grad = 1


@pytest.mark.parametrize("make", [gpt, bert, t5], ids=["gpt", "bert", "t5"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), threads=st.sampled_from([1, 2]))
def test_frozen_parameters_get_no_gradient_and_the_others_are_unchanged(make, seed, threads):
    full, part = make(), make()
    full.num_threads = 1
    part.num_threads = threads  # 2: the batch split over replicas, which must follow the flags
    run(full)
    names = [name for name, _ in part.named_parameters()]
    frozen = set(np.random.default_rng(seed).choice(names, size=len(names) // 2, replace=False))
    for name, p in part.named_parameters():
        p.requires_grad = name not in frozen
    run(part)
    expected = dict(full.named_parameters())
    for name, p in part.named_parameters():
        if name in frozen:
            assert p.grad is None, name
        else:
            np.testing.assert_allclose(p.grad, expected[name].grad, rtol=1e-12, atol=1e-14)


def test_a_frozen_weight_never_forms_its_gradient_product(monkeypatch):
    calls: list[bool] = []
    original = functional_linear.linear_backward

    def spy(dout, cache, need_weight=True):
        calls.append(need_weight)
        return original(dout, cache, need_weight=need_weight)

    monkeypatch.setattr("numpyllm.nn.linear.linear_backward", spy)
    layer = Linear(4, 3, dtype=np.float64)
    layer.weight.requires_grad = False
    x = np.random.default_rng(0).standard_normal((5, 4))
    layer(x)
    kept = layer._cache  # x's shape alone: nothing of x stays alive for the backward
    assert kept.shape == x.shape and kept.strides == (0, 0) and not np.shares_memory(kept, x)
    dx = layer.backward(np.ones((5, 3)))
    assert calls == [False] and layer.weight.grad is None
    np.testing.assert_allclose(dx, np.ones((5, 3)) @ layer.weight.data.T)
    np.testing.assert_allclose(layer.bias.grad, np.full(3, 5.0))


@pytest.mark.parametrize("weight_frozen,bias_frozen", [(True, True), (True, False), (False, True)])
def test_a_frozen_layer_norm_parameter_never_forms_its_reduction(monkeypatch, weight_frozen,
                                                                 bias_frozen):  # fmt: skip
    calls: list[tuple] = []
    original = functional_norms.layer_norm_backward

    def spy(dout, cache, need_weight=True, need_bias=True):
        grads = original(dout, cache, need_weight=need_weight, need_bias=need_bias)
        calls.append(grads)
        return grads

    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 4))
    trained, frozen = LayerNorm(4, dtype=np.float64), LayerNorm(4, dtype=np.float64)
    for norm in (trained, frozen):
        norm.weight.data[...] = rng.standard_normal(4)  # not all ones: w enters dx
    frozen.weight.data[...] = trained.weight.data
    frozen.weight.requires_grad = not weight_frozen
    frozen.bias.requires_grad = not bias_frozen
    trained(x)
    expected = trained.backward(dout)
    monkeypatch.setattr("numpyllm.nn.norms.layer_norm_backward", spy)
    frozen(x)
    np.testing.assert_array_equal(frozen.backward(dout), expected)
    _, dweight, dbias = calls[0]
    assert (dweight is None) == weight_frozen and (dbias is None) == bias_frozen
    assert (frozen.weight.grad is None) == weight_frozen
    assert (frozen.bias.grad is None) == bias_frozen
    if not weight_frozen:
        np.testing.assert_array_equal(frozen.weight.grad, trained.weight.grad)
    if not bias_frozen:
        np.testing.assert_array_equal(frozen.bias.grad, trained.bias.grad)


def test_optimizers_clipping_and_groups_leave_frozen_parameters_out():
    model = gpt()
    model.wte.weight.requires_grad = False
    model.h[0].requires_grad_(False)
    trainable = model.trainable_parameters()
    assert len(trainable) == len(model.parameters()) - 1 - len(model.h[0].parameters())
    groups = param_groups_for_weight_decay(model, 0.1)
    listed = [name for g in groups for name in g["names"]]
    assert "wte.weight" not in listed and not any(n.startswith("h.0.") for n in listed)
    opt = AdamW(model.parameters(), lr=0.1)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    run(model)
    expected = np.sqrt(sum(float((p.grad**2).sum()) for p in trainable))
    norm = clip_grad_norm(model.parameters(), 1e-3)
    assert norm == pytest.approx(expected, rel=1e-12)
    opt.step()
    for name, p in model.named_parameters():
        moved = not np.array_equal(p.data, before[name])
        assert moved == p.requires_grad, name
    state = opt.state_dict()["state"]
    assert len(state) == 2 * len(trainable)  # exp_avg and exp_avg_sq, trainable ones only
    assert sum(v.size for v in state.values()) == 2 * sum(p.size for p in trainable)


def test_optimizer_errors_for_all_frozen_and_for_freezing_after_it_was_built():
    model = gpt()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        SGD(model.parameters(), lr=0.1)
    model.requires_grad_(True)
    opt = SGD(model.parameters(), lr=0.1)
    model.ln_f.weight.requires_grad = False
    with pytest.raises(ValueError, match="build a new optimizer"):
        opt.step()
