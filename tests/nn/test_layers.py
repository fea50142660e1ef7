"""Every layer's backward against finite differences, for its input and its parameters."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.gradcheck import gradcheck_model, numerical_gradient, relative_error
from numpyllm.nn import (
    Dropout,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    Module,
    MultiHeadAttention,
    RMSNorm,
)


class Probe(Module):
    """loss = sum(layer(x) * dout): checks parameter gradients and the input gradient."""

    def __init__(self, layer, x, rng, call=None):
        super().__init__()
        self.layer = layer.astype(np.float64)
        self.x = x
        self.call = call or (lambda layer, x: layer(x))
        out = self.call(self.layer, x)
        self.dout = rng.standard_normal(out.shape)
        self.dx = None

    def loss(self):
        return float(np.sum(self.call(self.layer, self.x) * self.dout))

    def backward(self):
        grads = self.layer.backward(self.dout.copy())
        self.dx = grads[0] if isinstance(grads, tuple) else grads


def check_layer(layer, x, seed, call=None):
    rng = np.random.default_rng(seed)
    probe = Probe(layer, x, rng, call)
    errors = gradcheck_model(probe, probe.loss, rng, samples_per_tensor=4)
    assert max(errors.values()) < 1e-6, errors
    if x.dtype.kind == "f":
        probe.zero_grad()
        probe.loss()
        probe.backward()
        numeric = numerical_gradient(probe.loss, x)
        assert relative_error(probe.dx, numeric) < 1e-6


sizes = st.integers(1, 4)


@given(b=sizes, t=sizes, d_in=sizes, d_out=sizes, bias=st.booleans(), seed=st.integers(0, 99))
def test_linear(b, t, d_in, d_out, bias, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(d_in, d_out, bias=bias, rng=rng, std=1.0)
    check_layer(layer, rng.standard_normal((b, t, d_in)), seed)


@given(b=sizes, t=sizes, d=sizes, seed=st.integers(0, 99))
def test_norms(b, t, d, seed):
    rng = np.random.default_rng(seed)
    # three or more features: with two, LayerNorm's output is +-1 whatever the input
    x = rng.standard_normal((b, t, d + 2))
    for layer in (LayerNorm(d + 2), RMSNorm(d + 2)):
        for p in layer.parameters():
            p.data[...] = rng.standard_normal(p.shape)
        check_layer(layer, x, seed)


@given(
    # relu is left out: a random input lands near its kink, where finite differences
    # are meaningless (its backward is checked away from the kink in tests/functional)
    activation=st.sampled_from(["gelu", "gelu_new"]),
    gated=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 99),
)
def test_feed_forward(activation, gated, bias, seed):
    rng = np.random.default_rng(seed)
    layer = FeedForward(3, 5, activation=activation, gated=gated, bias=bias, rng=rng, std_in=1.0)
    check_layer(layer, rng.standard_normal((2, 3, 3)), seed)


def test_embedding_accumulates_repeated_ids():
    rng = np.random.default_rng(0)
    layer = Embedding(5, 3, rng=rng)
    ids = np.array([[1, 1, 4], [0, 1, 4]])
    layer(ids)
    dout = rng.standard_normal((2, 3, 3)).astype(np.float32)
    layer.backward(dout)
    expected = np.zeros((5, 3), np.float32)
    for (i, j), token in np.ndenumerate(ids):
        expected[token] += dout[i, j]
    np.testing.assert_allclose(layer.weight.grad, expected, rtol=1e-6)


@given(
    n_head=st.integers(1, 3),
    causal=st.booleans(),
    bias=st.booleans(),
    cross=st.booleans(),
    seed=st.integers(0, 99),
)
def test_multi_head_attention(n_head, causal, bias, cross, seed):
    rng = np.random.default_rng(seed)
    d = 2 * n_head
    layer = MultiHeadAttention(d, n_head, bias=bias, causal=causal and not cross, rng=rng, std=0.7)
    x = rng.standard_normal((2, 3, d))
    if cross:
        memory = rng.standard_normal((2, 4, d))
        check_layer(layer, x, seed, call=lambda layer, x: layer(x, memory))
    else:
        check_layer(layer, x, seed)


def test_attention_position_bias_gradient():
    rng = np.random.default_rng(3)
    layer = MultiHeadAttention(4, 2, bias=False, scale=1.0, rng=rng, std=0.7).astype(np.float64)
    x = rng.standard_normal((2, 3, 4))
    position_bias = rng.standard_normal((1, 2, 3, 3))
    dout = rng.standard_normal((2, 3, 4))

    def loss():
        return float(np.sum(layer(x, bias=position_bias) * dout))

    loss()
    _, _, dbias = layer.backward(dout)
    assert dbias.shape == position_bias.shape
    assert relative_error(dbias, numerical_gradient(loss, position_bias)) < 1e-6


def test_kv_cache_and_projected_kv_match_full_pass():
    rng = np.random.default_rng(4)
    layer = MultiHeadAttention(6, 3, causal=True, rng=rng, std=0.5).astype(np.float64)
    x = rng.standard_normal((2, 5, 6))
    full = layer(x)
    out, past = layer(x[:, :3], use_cache=True)
    steps = [out]
    for t in range(3, 5):
        out, past = layer(x[:, t : t + 1], past_kv=past, use_cache=True)
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-12)

    cross = MultiHeadAttention(6, 3, rng=rng, std=0.5).astype(np.float64)
    memory = rng.standard_normal((2, 4, 6))
    np.testing.assert_allclose(
        cross(x, kv=cross.project_kv(memory)), cross(x, memory), atol=1e-12
    )


def test_dropout_layer_uses_its_generator_and_eval_is_identity():
    x = np.ones((4, 100), np.float32)
    a = Dropout(0.5, rng=np.random.default_rng(7))
    b = Dropout(0.5, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a(x), b(x))
    a.eval()
    np.testing.assert_array_equal(a(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_layers_keep_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    for layer in (Linear(4, 4), LayerNorm(4), RMSNorm(4), FeedForward(4, 8),
                  MultiHeadAttention(4, 2, causal=True)):  # fmt: skip
        out = layer(x)
        assert out.dtype == np.float32
        grads = layer.backward(np.ones_like(out))
        dx = grads[0] if isinstance(grads, tuple) else grads
        assert dx.dtype == np.float32
        assert all(p.grad.dtype == np.float32 for p in layer.parameters())


@pytest.mark.parametrize(
    "layer",
    [Linear(3, 2), Embedding(5, 3), LayerNorm(3), RMSNorm(3), FeedForward(3, 4, gated=True)],
    ids=lambda layer: type(layer).__name__,
)
def test_a_backward_without_its_forward_says_so(layer):
    x = np.array([[1, 2]]) if isinstance(layer, Embedding) else np.ones((1, 2, 3), np.float32)
    dout = np.ones(layer(x).shape, np.float32)
    layer.backward(dout)
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward needs a forward"):
        layer.backward(dout)
