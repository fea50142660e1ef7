"""Activations: gradients against finite differences, values against independent references."""

import math

import numpy as np
import pytest
from hypothesis import given

from numpyllm.functional import activations as act
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    FLOAT_DTYPES,
    batch_shapes,
    dtypes,
    float_arrays,
    no_fp_warnings,
    normal_arrays,
    random_dout,
    seeds,
)

OPS = {
    "relu": (act.relu_forward, act.relu_backward),
    "sigmoid": (act.sigmoid_forward, act.sigmoid_backward),
    "tanh": (act.tanh_forward, act.tanh_backward),
    "gelu": (act.gelu_forward, act.gelu_backward),
    "gelu_tanh": (act.gelu_tanh_forward, act.gelu_tanh_backward),
}


def gelu_reference(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("name", sorted(OPS))
@given(x=normal_arrays(batch_shapes(max_dims=3), scale=3.0), seed=seeds())
def test_backward_matches_finite_differences(name, x, seed):
    forward, backward = OPS[name]
    if name == "relu":
        x = x + np.copysign(0.05, x)  # keep every element away from the kink at 0
    errors = gradcheck(forward, backward, {"x": x}, dout=random_dout(x.shape, seed))
    assert errors["x"] < 1e-6, errors


@pytest.mark.parametrize("name", sorted(OPS))
@given(x=float_arrays(batch_shapes(max_dims=3), dtypes(), scale=20.0), seed=seeds())
def test_dtype_and_shape_are_kept(name, x, seed):
    forward, backward = OPS[name]
    out, cache = forward(x)
    dx = backward(random_dout(x.shape, seed, x.dtype), cache)
    assert out.dtype == x.dtype and np.shape(out) == x.shape
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))


@pytest.mark.parametrize("name", sorted(OPS))
def test_integer_input_is_rejected(name):
    forward, _ = OPS[name]
    with pytest.raises(TypeError, match="floating"):
        forward(np.arange(4))


@given(x=float_arrays(batch_shapes(min_dims=1), dtypes(), scale=50.0))
def test_relu_values_and_gradient_mask(x):
    out, cache = act.relu_forward(x)
    np.testing.assert_array_equal(out, np.where(x > 0, x, 0))
    dout = np.full(x.shape, 3.0, dtype=x.dtype)
    np.testing.assert_array_equal(act.relu_backward(dout, cache), np.where(x > 0, 3.0, 0.0))


def test_relu_gradient_at_zero_is_zero():
    _, cache = act.relu_forward(np.array([0.0, -0.0]))
    np.testing.assert_array_equal(act.relu_backward(np.ones(2), cache), [0.0, 0.0])


# ----------------------------------------------------------------------- sigmoid


@given(x=float_arrays(batch_shapes(min_dims=1), dtypes(), scale=1e4))
def test_sigmoid_is_stable_and_symmetric(x):
    with no_fp_warnings():
        y, _ = act.sigmoid_forward(x)
        y_neg, _ = act.sigmoid_forward(-x)
    assert np.all((y >= 0) & (y <= 1))
    tol = 2 * np.finfo(x.dtype).eps
    np.testing.assert_allclose(y + y_neg, 1.0, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sigmoid_relative_accuracy_in_both_tails(dtype):
    x = np.array([-80.0, -30.0, -5.0, 0.0, 5.0, 30.0, 1e4, -1e4], dtype=dtype)
    with no_fp_warnings():
        y, _ = act.sigmoid_forward(x)
    expected = np.array([1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0 for v in x.tolist()])
    rtol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(y, expected.astype(dtype), rtol=rtol, atol=1e-300)


def test_tanh_matches_numpy():
    x = np.linspace(-20, 20, 101)
    np.testing.assert_array_equal(act.tanh_forward(x)[0], np.tanh(x))


# --------------------------------------------------------------------------- erf


def test_erf_float64_within_two_ulp_of_math_erf():
    x = np.linspace(-7.0, 7.0, 200_001)
    ours = act.erf(x)
    ref = np.array([math.erf(v) for v in x.tolist()])
    ulp = np.spacing(np.abs(ref))
    assert np.max(np.abs(ours - ref) / ulp) <= 2.0


def test_erf_keeps_relative_accuracy_near_zero_and_is_odd():
    x = np.geomspace(1e-300, 1.0, 2000)
    ref = np.array([math.erf(v) for v in x.tolist()])
    np.testing.assert_allclose(act.erf(x), ref, rtol=4e-16, atol=0)
    np.testing.assert_array_equal(act.erf(-x), -act.erf(x))
    np.testing.assert_array_equal(act.erf(np.array([0.0, 30.0, -30.0])), [0.0, 1.0, -1.0])


def test_erf_float32_stays_float32_and_is_accurate():
    x = np.linspace(-6.0, 6.0, 20_001, dtype=np.float32)
    ours = act.erf(x)
    ref = np.array([math.erf(v) for v in x.astype(np.float64).tolist()])
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) < 3e-7


# -------------------------------------------------------------------------- GELU


def test_gelu_float64_matches_erf_reference():
    x = np.linspace(-10.0, 10.0, 40_001)
    ours = act.gelu_forward(x)[0]
    ref = np.array([gelu_reference(v) for v in x.tolist()])
    # The reference itself loses ~1e-16 |x| to cancellation in 1 + erf.
    assert np.all(np.abs(ours - ref) <= 4e-16 * np.abs(ref) + 1.2e-16 * np.abs(x))


def test_gelu_float64_tail_has_relative_accuracy():
    mpmath = pytest.importorskip("mpmath")
    x = np.linspace(-35.0, -3.0, 321)
    ours = act.gelu_forward(x)[0]
    ref = np.array([float(mpmath.mpf(v) * mpmath.ncdf(v)) for v in x.tolist()])
    np.testing.assert_allclose(ours, ref, rtol=1e-13, atol=0.0)


def test_gelu_float32_close_to_float64():
    x = np.linspace(-12.0, 12.0, 100_001).astype(np.float32)
    ours = act.gelu_forward(x)[0]
    ref = act.gelu_forward(x.astype(np.float64))[0]
    assert ours.dtype == np.float32
    assert np.all(np.abs(ours - ref) <= 2e-7 * np.maximum(1.0, np.abs(ref)))


@given(x=float_arrays(batch_shapes(min_dims=1), dtypes(), scale=30.0), seed=seeds())
def test_gelu_backward_float32_agrees_with_float64(x, seed):
    dout = random_dout(x.shape, seed)
    dx64 = act.gelu_backward(dout, act.gelu_forward(x.astype(np.float64))[1])
    dx32 = act.gelu_backward(dout.astype(np.float32), act.gelu_forward(x.astype(np.float32))[1])
    np.testing.assert_allclose(dx32, dx64, rtol=2e-6, atol=2e-6 * np.max(np.abs(dout)))


@given(x=float_arrays(batch_shapes(min_dims=1), dtypes(), scale=30.0))
def test_gelu_tanh_matches_its_formula(x):
    xd = x.astype(np.float64)
    ref = 0.5 * xd * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (xd + 0.044715 * xd**3)))
    out = act.gelu_tanh_forward(x)[0]
    eps = np.finfo(x.dtype).eps
    np.testing.assert_allclose(out, ref, rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh"])
@given(x=float_arrays(batch_shapes(min_dims=2), dtypes(), scale=5.0), seed=seeds())
def test_gelu_chunks_change_nothing(name, x, seed):
    # Chunked passes (here 7 elements a chunk, so most arrays span several, and a transposed,
    # non-contiguous view) give the whole-array result bit for bit, forward and backward.
    forward, backward = OPS[name]
    dout = random_dout(x.shape, seed, x.dtype)
    whole_out, whole_cache = forward(x.T)
    whole_dx = backward(dout.T, whole_cache)
    saved = act.CHUNK_ELEMENTS
    act.CHUNK_ELEMENTS = 7
    try:
        out, cache = forward(x.T)
        dx = backward(dout.T, cache)
    finally:
        act.CHUNK_ELEMENTS = saved
    np.testing.assert_array_equal(out, whole_out)
    np.testing.assert_array_equal(dx, whole_dx)
    xd = x.T.astype(np.float64)
    if name == "gelu_tanh":
        ref = 0.5 * xd * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (xd + 0.044715 * xd**3)))
    else:
        ref = np.vectorize(gelu_reference)(xd)
    tol = max(8 * np.finfo(x.dtype).eps, 2e-7)  # float32's fast Φ: within about 1e-7
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)


def test_gelu_variants_are_different_functions():
    # A GELU flag that silently falls back to the other variant would pass
    # each variant's own gradient check; their values must differ.
    x = np.array([-2.0, 1.0])
    exact = act.gelu_forward(x)[0]
    approx = act.gelu_tanh_forward(x)[0]
    assert np.all(np.abs(exact - approx) > 1e-5)
    np.testing.assert_allclose(exact, [gelu_reference(-2.0), gelu_reference(1.0)], rtol=1e-15)


@pytest.mark.parametrize("name", sorted(OPS))
def test_backward_leaves_its_inputs_alone_and_is_repeatable(name):
    forward, backward = OPS[name]
    x = np.linspace(-3.0, 3.0, 13)
    x_before = x.copy()
    out, cache = forward(x)
    dout = random_dout(x.shape, 0)
    dout_before = dout.copy()
    first = backward(dout, cache)
    second = backward(dout, cache)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(dout, dout_before)
    np.testing.assert_array_equal(x, x_before)
