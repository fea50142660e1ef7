"""LayerNorm and RMSNorm: gradients for x and every parameter, normalisation, dtypes, errors."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from numpyllm.functional.norms import (
    layer_norm_backward,
    layer_norm_forward,
    layer_norm_inference,
    layer_norm_output,
    rms_norm_backward,
    rms_norm_forward,
)
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    batch_shapes,
    dtypes,
    float_arrays,
    normal_arrays,
    random_array,
    random_dout,
    seeds,
    shapes_ending_in,
    sides,
)


def layer_norm_reference(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def rms_norm_reference(x, w, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


# -------------------------------------------------------------------- gradients


@given(
    # Rows whose spread is near the finite-difference step (1e-3) would make the
    # numerical derivative, not the backward, inaccurate: keep them well spread.
    x=normal_arrays(shapes_ending_in(sides(4, 8)), scale=3.0),
    seed=seeds(),
    eps=st.sampled_from([1e-5, 1e-2]),
)
def test_layer_norm_backward_matches_finite_differences(x, seed, eps):
    assume(np.all(x.std(-1) > 0.3))
    d = x.shape[-1]
    inputs = {
        "x": x + 2.0,  # a non-zero mean, which the backward must remove
        "weight": random_array((d,), seed),
        "bias": random_array((d,), seed + 7),
    }
    errors = gradcheck(
        layer_norm_forward, layer_norm_backward, inputs, kwargs={"eps": eps},
        dout=random_dout(x.shape, seed),
    )
    assert max(errors.values()) < 1e-6, errors


@given(x=normal_arrays(shapes_ending_in(sides(1, 8)), scale=2.0), seed=seeds())
def test_rms_norm_backward_matches_finite_differences(x, seed):
    assume(np.all(np.sqrt((x * x).mean(-1)) > 0.3))
    inputs = {"x": x, "weight": random_array((x.shape[-1],), seed)}
    errors = gradcheck(
        rms_norm_forward, rms_norm_backward, inputs, kwargs={"eps": 1e-6},
        dout=random_dout(x.shape, seed),
    )
    assert max(errors.values()) < 1e-6, errors


@given(x=normal_arrays(shapes_ending_in(sides(2, 8))), seed=seeds())
def test_layer_norm_input_gradient_sums_to_zero_per_row(x, seed):
    # Adding a constant to a row changes nothing, so dx is orthogonal to (1, ..., 1).
    d = x.shape[-1]
    _, cache = layer_norm_forward(x, random_array((d,), seed), np.zeros(d))
    dx, _, _ = layer_norm_backward(random_dout(x.shape, seed), cache)
    np.testing.assert_allclose(dx.sum(-1), 0.0, atol=1e-9 * (1 + np.abs(dx).max()))


# --------------------------------------------------------------------- values


@given(x=float_arrays(shapes_ending_in(sides(2, 16)), scale=100.0))
def test_layer_norm_rows_have_zero_mean_unit_variance(x):
    var = x.var(-1)
    assume(np.all(var > 1e-3))
    d = x.shape[-1]
    eps = 1e-5
    y, _ = layer_norm_forward(x, np.ones(d), np.zeros(d), eps=eps)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-12)
    # Exactly var / (var + eps), which is 1 up to eps / var.
    np.testing.assert_allclose(y.var(-1), var / (var + eps), rtol=1e-10)


@given(x=float_arrays(shapes_ending_in(sides(1, 16)), scale=100.0))
def test_rms_norm_rows_have_unit_rms(x):
    ms = (x * x).mean(-1)
    assume(np.all(ms > 1e-3))
    d = x.shape[-1]
    y, _ = rms_norm_forward(x, np.ones(d), eps=1e-6)
    np.testing.assert_allclose(np.sqrt((y * y).mean(-1)), np.sqrt(ms / (ms + 1e-6)), rtol=1e-12)


@given(x=normal_arrays(shapes_ending_in(sides(1, 8)), scale=5.0), seed=seeds())
def test_norms_match_plain_formulas(x, seed):
    d = x.shape[-1]
    w, b = random_array((d,), seed), random_array((d,), seed + 1)
    np.testing.assert_allclose(
        layer_norm_forward(x, w, b)[0], layer_norm_reference(x, w, b, 1e-5), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        rms_norm_forward(x, w)[0], rms_norm_reference(x, w, 1e-6), rtol=1e-12, atol=1e-12
    )


def test_layer_norm_of_a_constant_row_is_the_bias():
    y, cache = layer_norm_forward(np.full((2, 4), 3.0), np.full(4, 2.0), np.arange(4.0))
    np.testing.assert_array_equal(y, np.broadcast_to(np.arange(4.0), (2, 4)))
    assert np.all(np.isfinite(layer_norm_backward(np.ones((2, 4)), cache)[0]))


# --------------------------------------------------------------------- dtypes


@given(dtype=dtypes(), x=normal_arrays(shapes_ending_in(sides(2, 6)), scale=3.0), seed=seeds())
def test_norms_keep_dtype(dtype, x, seed):
    x = x.astype(dtype)
    d = x.shape[-1]
    w, b = random_array((d,), seed, dtype), random_array((d,), seed + 1, dtype)
    dout = random_dout(x.shape, seed, dtype)
    y, cache = layer_norm_forward(x, w, b)
    grads = layer_norm_backward(dout, cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert [g.shape for g in grads] == [x.shape, (d,), (d,)]
    y, cache = rms_norm_forward(x, w)
    grads = rms_norm_backward(dout, cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert [g.shape for g in grads] == [x.shape, (d,)]


@given(x=normal_arrays(shapes_ending_in(sides(2, 6)), scale=3.0), seed=seeds())
def test_float32_agrees_with_float64(x, seed):
    d = x.shape[-1]
    w, b = random_array((d,), seed), random_array((d,), seed + 1)
    dout = random_dout(x.shape, seed)
    for forward, backward, params in [
        (layer_norm_forward, layer_norm_backward, (w, b)),
        (rms_norm_forward, rms_norm_backward, (w,)),
    ]:
        y64, c64 = forward(x, *params)
        y32, c32 = forward(x.astype(np.float32), *(p.astype(np.float32) for p in params))
        np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
        for g32, g64 in zip(backward(dout.astype(np.float32), c32), backward(dout, c64)):
            np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-3 * (1 + np.abs(g64).max()))


# --------------------------------------------------------------------- errors


def test_bad_inputs_are_rejected():
    x = np.zeros((2, 4))
    with pytest.raises(ValueError, match="weight must have shape"):
        layer_norm_forward(x, np.ones(3), np.zeros(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        layer_norm_forward(x, np.ones(4), np.zeros(5))
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_forward(x, np.ones((4, 1)))
    with pytest.raises(TypeError, match="floating"):
        rms_norm_forward(np.zeros((2, 4), dtype=np.int32), np.ones(4))
    with pytest.raises(ValueError, match="scalar"):
        layer_norm_forward(np.float64(1.0), np.ones(1), np.zeros(1))


# --------------------------------------------------------------------- inference


@given(
    lead=batch_shapes(min_dims=1, max_dims=3),
    d=sides(1, 8),
    dtype=dtypes(),
    seed=seeds(),
    eps=st.sampled_from([1e-5, 1e-2, 0.5]),
)
def test_layer_norm_inference_is_the_forwards_output(lead, d, dtype, seed, eps):
    offset = random_array((*lead, 1), seed + 2, dtype)  # rows not centred on 0
    x = random_array((*lead, d), seed, dtype, scale=3.0) + offset
    w = 1.0 + random_array((d,), seed + 3, dtype, scale=0.5)
    b = random_array((d,), seed + 4, dtype)
    x_before = x.copy()
    y = layer_norm_inference(x, w, b, eps)
    expected, _ = layer_norm_forward(x, w, b, eps)
    assert y.shape == x.shape and y.dtype == dtype
    assert np.array_equal(y, expected)
    assert np.array_equal(x, x_before)  # x is not normalised in place
    # and the output rebuilt from a cache (what GPT's backward reads) is the same bits
    _, cache = layer_norm_forward(x, w, b, eps)
    assert np.array_equal(layer_norm_output(cache, b), expected)
    if dtype == np.float64:
        np.testing.assert_allclose(y, layer_norm_reference(x, w, b, eps), rtol=1e-12, atol=1e-12)


def test_layer_norm_inference_accepts_a_strided_view():
    x = np.random.default_rng(0).standard_normal((5, 3, 6))
    view = x[:, -1]  # (5, 6), not contiguous: the decoder normalises its last position so
    w, b = np.linspace(0.5, 1.5, 6), np.linspace(-1, 1, 6)
    assert np.array_equal(layer_norm_inference(view, w, b, 1e-5), layer_norm_forward(view, w, b)[0])


def test_layer_norm_module_output_is_its_forwards_output():
    from numpyllm.nn.norms import LayerNorm

    norm = LayerNorm(6)
    norm.weight.data[:] = np.linspace(0.5, 1.5, 6)
    norm.bias.data[:] = np.linspace(-1, 1, 6)
    with pytest.raises(RuntimeError, match="needs a forward first"):
        norm.output()
    x = np.random.default_rng(1).standard_normal((2, 3, 6)).astype(np.float32)
    y = norm(x)
    assert np.array_equal(norm.output(), y)
    norm.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="needs a forward first"):
        norm.output()
