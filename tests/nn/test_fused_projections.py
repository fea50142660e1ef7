"""Projections of one input in one product (``fused_project``) give what the layers give one
by one: outputs side by side, each layer's gradients, the input gradient summed, frozen
layers left alone (x not even kept when every weight is frozen), and a LoRA layer among
them handled through its own methods."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyllm.nn import Linear
from numpyllm.nn.linear import fused_input_to_keep, fused_project, fused_project_backward
from numpyllm.nn.lora import LoraLinear

sizes = st.integers(1, 4)


def make_layers(rng, d_in, outs, biases, frozen, lora):
    layers = []
    for i, (d_out, bias) in enumerate(zip(outs, biases)):
        layer = Linear(d_in, d_out, bias=bias, rng=rng, std=1.0, dtype=np.float64)
        if lora and i == 0:
            layer = LoraLinear(layer, r=2, lora_alpha=3.0, rng=rng)
            layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape)
        if frozen == "all" or (frozen == "last" and i == len(outs) - 1):
            layer.requires_grad_(False)
        layers.append(layer)
    return layers


@settings(max_examples=30)
@given(b=sizes, d_in=sizes, outs=st.lists(sizes, min_size=1, max_size=3), bias=st.booleans(),
       frozen=st.sampled_from(["none", "last", "all"]), lora=st.booleans(),
       seed=st.integers(0, 99))  # fmt: skip
def test_fused_projections_equal_the_layers_one_by_one(b, d_in, outs, bias, frozen, lora, seed):
    rng = np.random.default_rng(seed)
    layers = make_layers(rng, d_in, outs, [bias] * len(outs), frozen, lora)
    x = rng.standard_normal((b, 3, d_in))
    dout = rng.standard_normal((b, 3, sum(outs)))

    y = fused_project(layers, x)
    assert y.shape == (b, 3, sum(outs))
    kept = fused_input_to_keep(layers, x)  # no memory when no backward reads x
    assert (kept is x) == (lora or any(layer.weight.requires_grad for layer in layers))
    dx = fused_project_backward(layers, dout, kept)
    fused_grads = [None if p.grad is None else p.grad.copy() for p in _params(layers)]

    for p in _params(layers):
        p.zero_grad()
    ends = np.cumsum([0, *outs])
    expected_dx = np.zeros_like(x)
    for layer, lo, hi in zip(layers, ends[:-1], ends[1:]):
        np.testing.assert_allclose(y[..., lo:hi], layer.project(x), rtol=1e-12, atol=1e-12)
        expected_dx += layer.backward_from_input(np.ascontiguousarray(dout[..., lo:hi]), x)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-12, atol=1e-12)
    for p, fused in zip(_params(layers), fused_grads):
        if p.requires_grad:
            np.testing.assert_allclose(fused, p.grad, rtol=1e-12, atol=1e-12)
        else:
            assert p.grad is None and fused is None


def _params(layers):
    return [p for layer in layers for p in layer.parameters()]
