"""LoRA's linear map: y = x W + b + s * dropout(x) A^T B^T, its gradients and its layer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyllm.functional.lora import (
    lora_adapter_gradients,
    lora_backward,
    lora_forward,
    lora_weight,
)
from numpyllm.gradcheck import gradcheck
from numpyllm.nn.linear import Linear
from numpyllm.nn.lora import LoraLinear
from tests.functional.strategies import batch_shapes, random_array, random_dout, seeds

SIDE = st.integers(1, 5)
RANK = st.integers(1, 3)


def draw_inputs(batch, d_in, d_out, r, seed, with_bias=True):
    inputs = {
        "x": random_array(batch + (d_in,), seed),
        "weight": random_array((d_in, d_out), seed + 1),
        "lora_a": random_array((r, d_in), seed + 2),
        "lora_b": random_array((d_out, r), seed + 3),  # non-zero: every gradient term counts
    }
    if with_bias:
        inputs["bias"] = random_array((d_out,), seed + 4)
    return inputs


@given(batch=batch_shapes(), d_in=SIDE, d_out=SIDE, r=RANK, with_bias=st.booleans(),
       p=st.sampled_from([0.0, 0.3]), scaling=st.floats(0.25, 4.0), seed=seeds())  # fmt: skip
def test_backward_matches_finite_differences(batch, d_in, d_out, r, with_bias, p, scaling, seed):
    inputs = draw_inputs(batch, d_in, d_out, r, seed, with_bias)

    def forward(**arrays):  # one fixed dropout mask for every evaluation
        return lora_forward(**arrays, scaling=scaling, dropout=p, rng=np.random.default_rng(seed))

    def backward(dout, cache):
        dx, dw, db, da, dbb = lora_backward(dout, cache)
        grads = {"x": dx, "weight": dw, "lora_a": da, "lora_b": dbb, "bias": db}
        return {name: grads[name] for name in inputs}

    errors = gradcheck(forward, backward, inputs, dout=random_dout(batch + (d_out,), seed))
    assert max(errors.values()) < 1e-7, errors


@given(batch=batch_shapes(), d_in=SIDE, d_out=SIDE, r=RANK, seed=seeds())
def test_forward_is_the_merged_weight_and_a_frozen_weight_gets_no_gradient(
    batch, d_in, d_out, r, seed
):
    inp = draw_inputs(batch, d_in, d_out, r, seed)
    y, cache = lora_forward(**inp, scaling=0.5)
    merged = inp["weight"] + 0.5 * inp["lora_a"].T @ inp["lora_b"].T  # (in, out)
    expected = np.einsum("...i,io->...o", inp["x"], merged) + inp["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    dout = random_dout(batch + (d_out,), seed)
    with_w = lora_backward(dout, cache)
    without_w = lora_backward(dout, cache, need_weight=False)
    assert without_w[1] is None
    for a, b in zip(with_w[:1] + with_w[2:], without_w[:1] + without_w[2:]):
        np.testing.assert_array_equal(a, b)


@given(batch=batch_shapes(), d_in=SIDE, d_out=SIDE, r=RANK, scaling=st.floats(0.25, 4.0),
       seed=seeds())  # fmt: skip
def test_folded_weight_gives_the_same_output_and_gradients(batch, d_in, d_out, r, scaling, seed):
    """Without dropout: y = x W' + b and dx = g W'^T with W' = W + s A^T B^T, and the thin
    products alone give dA and dB (the layer's folded form)."""
    inp = draw_inputs(batch, d_in, d_out, r, seed)
    y, cache = lora_forward(**inp, scaling=scaling)
    dout = random_dout(batch + (d_out,), seed)
    dx, _, _, da, dbb = lora_backward(dout, cache)
    folded = lora_weight(inp["weight"], inp["lora_a"], inp["lora_b"], scaling)
    np.testing.assert_allclose(inp["x"] @ folded + inp["bias"], y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dout @ folded.T, dx, rtol=1e-12, atol=1e-12)
    g2, x2 = dout.reshape(-1, d_out), inp["x"].reshape(-1, d_in)
    fda, fdb = lora_adapter_gradients(g2, x2, inp["lora_a"], inp["lora_b"], scaling)
    np.testing.assert_allclose(fda, da, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fdb, dbb, rtol=1e-12, atol=1e-12)


def test_layer_folds_for_many_rows_and_not_for_a_few_or_with_dropout():
    layer = lora_layer(6, 4, 2, 0.0, seed=0)
    assert layer.folds(3) and not layer.folds(2)  # rows (in + out) >= in out
    with_dropout = lora_layer(6, 4, 2, 0.5, seed=0)
    assert not with_dropout.folds(100)
    assert with_dropout.eval().folds(100)  # dropout is the identity in evaluation


def lora_layer(d_in, d_out, r, p, seed, dtype=np.float64):
    base = Linear(d_in, d_out, rng=np.random.default_rng(seed), dtype=dtype)
    layer = LoraLinear(base, r=r, lora_alpha=2.0 * r, lora_dropout=p,
                       rng=np.random.default_rng(seed + 1))  # fmt: skip
    layer.lora_B.data[...] = np.random.default_rng(seed + 2).standard_normal(layer.lora_B.shape)
    return layer


@settings(max_examples=25)
@given(n=st.integers(1, 9), d_in=SIDE, d_out=SIDE, r=RANK, p=st.sampled_from([0.0, 0.4]),
       blocks=st.integers(1, 4), seed=seeds())  # fmt: skip
def test_layer_matches_the_functional_op_whole_or_over_blocks_of_rows(
    n, d_in, d_out, r, p, blocks, seed
):
    """project() over one block of rows and backward_from_input() over others (as GPT's MLP
    does) give the functional op's output and gradients, dropout masks included."""
    layer = lora_layer(d_in, d_out, r, p, seed)
    layer.weight.requires_grad = False
    x = random_array((n, d_in), seed + 3)
    dout = random_dout((n, d_out), seed)
    rng_state = layer.lora_dropout.rng.bit_generator.state
    y = layer.project(x)
    step = -(-n // blocks)
    dx = np.concatenate([
        layer.backward_from_input(dout[i : i + step], x[i : i + step]) for i in range(0, n, step)
    ])  # fmt: skip
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    ref_y, cache = lora_forward(x, layer.weight.data, layer.lora_A.data, layer.lora_B.data,
                                layer.bias.data, layer.scaling, dropout=p, rng=rng)  # fmt: skip
    ref_dx, ref_dw, ref_db, ref_da, ref_dbb = lora_backward(dout, cache, need_weight=False)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.lora_A.grad, ref_da, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.lora_B.grad, ref_dbb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, ref_db, rtol=1e-12, atol=1e-12)
    assert layer.weight.grad is None and layer.lora_dropout._cache is None


def test_layer_starts_as_its_base_and_merges_exactly():
    base = Linear(6, 4, rng=np.random.default_rng(0), dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((3, 5, 6))
    before = base.project(x)
    layer = LoraLinear(base, r=2, lora_alpha=4)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert layer.lora_A.shape == (2, 6) and layer.lora_B.shape == (4, 2)
    assert np.all(np.abs(layer.lora_A.data) <= 1 / np.sqrt(6))
    np.testing.assert_array_equal(layer.project(x), before)  # B = 0: exactly the base
    layer.lora_B.data[...] = 1.0
    merged = Linear(6, 4, dtype=np.float64)
    merged.weight.data[...] = base.weight.data + layer.delta_weight()
    merged.bias.data[...] = base.bias.data
    np.testing.assert_allclose(layer(x), merged(x), rtol=1e-12)


def test_bad_rank_and_base_are_refused():
    base = Linear(3, 3)
    with pytest.raises(ValueError, match="r must be an integer >= 1"):
        LoraLinear(base, r=0, lora_alpha=1)
    with pytest.raises(ValueError, match="dropout probability"):
        LoraLinear(base, r=1, lora_alpha=1, lora_dropout=-0.1)
    with pytest.raises(TypeError, match="plain Linear"):
        LoraLinear(LoraLinear(base, r=1, lora_alpha=1), r=1, lora_alpha=1)
