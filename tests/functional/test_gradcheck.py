"""The gradient checker itself: it must pass right backwards and catch wrong ones."""

import numpy as np
import pytest
from hypothesis import given

from numpyllm.functional.linear import linear_backward, linear_forward
from numpyllm.gradcheck import gradcheck, numerical_gradient, relative_error
from tests.functional.strategies import normal_arrays, random_array, seeds, shapes_ending_in


def sin_forward(x):
    return np.sin(x), x


def sin_backward(dout, x):
    return dout * np.cos(x)


def linear_inputs(seed):
    return {
        "x": random_array((3, 4), seed),
        "weight": random_array((4, 2), seed + 1),
        "bias": random_array((2,), seed + 2),
    }


@given(x=normal_arrays(shapes_ending_in(3)), seed=seeds())
def test_a_correct_backward_passes(x, seed):
    errors = gradcheck(sin_forward, sin_backward, {"x": x}, rng=np.random.default_rng(seed))
    assert errors["x"] < 1e-8


def test_numerical_gradient_is_fourth_order_accurate():
    x = np.array([0.3, -1.2, 2.0])
    grad = numerical_gradient(lambda: float(np.sum(np.sin(x))), x, h=1e-2)
    # Truncation error of the 4th-order stencil is ~h^4 f^(5) / 30, here ~3e-10.
    np.testing.assert_allclose(grad, np.cos(x), atol=1e-9, rtol=0)
    np.testing.assert_array_equal(x, [0.3, -1.2, 2.0])  # restored after perturbation


@pytest.mark.parametrize("wrong", ["dx", "dweight", "dbias"])
def test_a_wrong_backward_is_flagged_for_the_right_input(wrong):
    def bad_backward(dout, cache):
        grads = dict(zip(["dx", "dweight", "dbias"], linear_backward(dout, cache)))
        grads[wrong] = grads[wrong] * 1.1  # 10% off
        return grads["dx"], grads["dweight"], grads["dbias"]

    errors = gradcheck(linear_forward, bad_backward, linear_inputs(0))
    by_grad = {"dx": "x", "dweight": "weight", "dbias": "bias"}
    for grad_name, input_name in by_grad.items():
        if grad_name == wrong:
            assert errors[input_name] > 0.05, errors
        else:
            assert errors[input_name] < 1e-8, errors


def test_an_all_ones_dout_would_hide_a_bug_that_a_random_dout_finds():
    # softmax's outputs sum to 1, so with dout = 1 every input gradient is 0
    # whatever the backward says; a random dout exposes a backward that is 0.
    def softmax_forward(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True), None

    def zero_backward(dout, cache):
        return np.zeros_like(dout)

    x = random_array((2, 5), 0)
    ones = gradcheck(softmax_forward, zero_backward, {"x": x}, dout=np.ones((2, 5)))
    assert ones["x"] < 1e-8
    assert gradcheck(softmax_forward, zero_backward, {"x": x})["x"] > 0.5


def test_max_elements_samples_that_many_elements():
    calls = {"n": 0}

    def counting_forward(x):
        calls["n"] += 1
        return np.sin(x), x

    x = random_array((20, 30), 1)
    errors = gradcheck(counting_forward, sin_backward, {"x": x}, max_elements=7)
    assert errors["x"] < 1e-8
    assert calls["n"] == 1 + 4 * 7  # one forward for the output, four per sampled element

    def wrong_backward(dout, x):
        return dout * np.cos(x) + 1.0  # wrong everywhere, so any sample finds it

    assert gradcheck(sin_forward, wrong_backward, {"x": x}, max_elements=5)["x"] > 1e-2


def test_dict_returning_backward_is_matched_by_name():
    def backward(dout, cache):
        dx, dw, db = linear_backward(dout, cache)
        return {"bias": db, "weight": dw, "x": dx}

    errors = gradcheck(linear_forward, backward, linear_inputs(3))
    assert max(errors.values()) < 1e-8


def test_shape_mismatch_and_missing_gradients_raise():
    def transposed_backward(dout, cache):
        dx, dw, db = linear_backward(dout, cache)
        return dx, dw.T, db

    with pytest.raises(ValueError, match="gradient of 'weight' has shape"):
        gradcheck(linear_forward, transposed_backward, linear_inputs(0))

    def too_few(dout, cache):
        return linear_backward(dout, cache)[:2]

    with pytest.raises(ValueError, match="returned 2 gradients for 3 inputs"):
        gradcheck(linear_forward, too_few, linear_inputs(0))

    def none_for_bias(dout, cache):
        dx, dw, _ = linear_backward(dout, cache)
        return dx, dw, None

    with pytest.raises(ValueError, match="no gradient for input 'bias'"):
        gradcheck(linear_forward, none_for_bias, linear_inputs(0))


def test_relative_error_uses_a_floor_for_tiny_gradients():
    assert relative_error(np.array([1e-9]), np.array([2e-9])) == pytest.approx(1e-5)
    assert relative_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 1.1)
    assert relative_error(np.zeros(0), np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        relative_error(np.zeros(2), np.zeros(3))


def test_inputs_are_float64_copies():
    x32 = random_array((2, 3), 0).astype(np.float32)
    seen = {}

    def forward(x):
        seen["dtype"] = x.dtype
        return np.sin(x), x

    gradcheck(forward, sin_backward, {"x": x32})
    assert seen["dtype"] == np.float64
    assert x32.dtype == np.float32
