"""Cross-entropy, BCE-with-logits and MSE: values, gradients, stability, validation."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyllm.functional.losses import (
    bce_with_logits_backward,
    bce_with_logits_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    mse_backward,
    mse_forward,
)
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    batch_shapes,
    dtypes,
    float_arrays,
    no_fp_warnings,
    normal_arrays,
    random_array,
    seeds,
)


@st.composite
def logits_and_targets(draw, ignore_index=-100, scale=3.0, dtype=np.float64):
    batch = draw(batch_shapes(max_dims=2))
    vocab = draw(st.integers(1, 6))
    logits = draw(normal_arrays(batch + (vocab,), dtype, scale=scale))
    classes = st.integers(0, vocab - 1)
    targets = draw(
        hnp.arrays(np.int64, batch, elements=st.one_of(classes, st.just(ignore_index)))
    )
    return logits, targets


def naive_cross_entropy(logits, targets, ignore_index=-100):
    losses = []
    for position in np.ndindex(targets.shape):
        t = targets[position]
        if t == ignore_index:
            continue
        row = logits[position].astype(np.float64)
        losses.append(-math.log(math.exp(row[t]) / sum(math.exp(v) for v in row)))
    return sum(losses) / len(losses) if losses else 0.0


# ----------------------------------------------------------------- cross-entropy


@given(data=logits_and_targets())
def test_cross_entropy_equals_naive_nll(data):
    logits, targets = data
    loss, _ = cross_entropy_forward(logits, targets)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float64
    expected = naive_cross_entropy(logits, targets)
    assert math.isclose(float(loss), expected, rel_tol=1e-12, abs_tol=1e-14)


@given(data=logits_and_targets(ignore_index=3), seed=seeds())
def test_cross_entropy_honours_a_custom_ignore_index(data, seed):
    logits, targets = data
    loss, cache = cross_entropy_forward(logits, targets, ignore_index=3)
    expected = naive_cross_entropy(logits, targets, ignore_index=3)
    assert math.isclose(float(loss), expected, rel_tol=1e-12, abs_tol=1e-14)
    dlogits = cross_entropy_backward(1.0, cache)
    np.testing.assert_array_equal(dlogits[targets == 3], 0.0)


@given(data=logits_and_targets(), seed=seeds())
def test_cross_entropy_backward_matches_finite_differences(data, seed):
    logits, targets = data
    dloss = np.asarray(random_array((), seed))
    errors = gradcheck(
        cross_entropy_forward, cross_entropy_backward, {"logits": logits},
        kwargs={"targets": targets}, dout=dloss,
    )
    assert errors["logits"] < 1e-6, errors


@given(data=logits_and_targets())
def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n(data):
    logits, targets = data
    _, cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(2.0, cache)
    valid = targets != -100
    n = max(int(valid.sum()), 1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    expected = e / e.sum(-1, keepdims=True)
    vocab = logits.shape[-1]
    expected -= np.eye(vocab)[np.where(valid, targets, 0)]
    expected *= 2.0 / n * valid[..., None]
    np.testing.assert_allclose(dlogits, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_ignored_gives_zero_loss_and_zero_gradient(dtype):
    logits = np.ones((2, 3, 4), dtype=dtype)
    with no_fp_warnings():
        loss, cache = cross_entropy_forward(logits, np.full((2, 3), -100))
        dlogits = cross_entropy_backward(1.0, cache)
    assert float(loss) == 0.0 and loss.dtype == dtype
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    np.testing.assert_array_equal(dlogits, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype)
    targets = np.array([1, 2])
    with no_fp_warnings():
        loss, cache = cross_entropy_forward(logits, targets)
        dlogits = cross_entropy_backward(1.0, cache)
    # Row 0: -log softmax = 2e4 exactly; row 1: log 2. Mean of the two.
    assert loss.dtype == dtype and dlogits.dtype == dtype
    np.testing.assert_allclose(float(loss), (2e4 + math.log(2.0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(dlogits, [[0.5, -0.5, 0.0], [0.0, 0.25, -0.25]], atol=1e-7)


@given(data=logits_and_targets(dtype=np.float32, scale=10.0))
def test_cross_entropy_keeps_float32(data):
    logits, targets = data
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(np.float64(1.0), cache)
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32
    expected = naive_cross_entropy(logits, targets)
    assert math.isclose(float(loss), expected, rel_tol=1e-5, abs_tol=1e-5)


def test_cross_entropy_rejects_bad_targets():
    logits = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"target 5 is out of range for 5 classes"):
        cross_entropy_forward(logits, np.array([[0, 1, 2], [3, 5, 4]]))
    with pytest.raises(ValueError, match=r"target -1 is out of range"):
        cross_entropy_forward(logits, np.array([[0, 1, 2], [3, -1, 4]]))
    with pytest.raises(ValueError, match="expected"):
        cross_entropy_forward(logits, np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        cross_entropy_forward(logits, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="floating"):
        cross_entropy_forward(np.zeros((2, 3, 5), dtype=np.int64), np.zeros((2, 3), dtype=int))


# -------------------------------------------------------------------------- BCE


@st.composite
def logits_and_probabilities(draw, dtype=np.float64, scale=3.0):
    shape = draw(batch_shapes(min_dims=1, max_dims=3))
    logits = draw(normal_arrays(shape, dtype, scale=scale))
    targets = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1.0)))
    return logits, targets


@given(data=logits_and_probabilities(scale=5.0))
def test_bce_equals_naive_formula(data):
    x, y = data
    sig = 1.0 / (1.0 + np.exp(-x))
    expected = np.mean(-y * np.log(sig) - (1 - y) * np.log(1 - sig))
    loss, _ = bce_with_logits_forward(x, y)
    assert loss.shape == () and loss.dtype == np.float64
    assert math.isclose(float(loss), expected, rel_tol=1e-10, abs_tol=1e-12)


@given(data=logits_and_probabilities(), seed=seeds())
def test_bce_backward_matches_finite_differences(data, seed):
    x, y = data
    errors = gradcheck(
        bce_with_logits_forward, bce_with_logits_backward, {"logits": x},
        kwargs={"targets": y}, dout=np.asarray(random_array((), seed)),
    )
    assert errors["logits"] < 1e-6, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_is_stable_for_huge_logits(dtype):
    x = np.array([1e4, -1e4, 1e4, -1e4], dtype=dtype)
    y = np.array([0.0, 1.0, 1.0, 0.0])
    with no_fp_warnings():
        loss, cache = bce_with_logits_forward(x, y)
        dx = bce_with_logits_backward(1.0, cache)
    assert loss.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(float(loss), 2e4 / 4, rtol=1e-6)
    np.testing.assert_allclose(dx, np.array([1.0, -1.0, 0.0, 0.0]) / 4, atol=1e-7)


@given(data=logits_and_probabilities(dtype=np.float32))
def test_bce_keeps_float32_with_float64_targets(data):
    x, y = data
    loss, cache = bce_with_logits_forward(x, y)
    assert loss.dtype == np.float32 and bce_with_logits_backward(1.0, cache).dtype == np.float32


def test_bce_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce_with_logits_forward(np.zeros(3), np.array([0.0, 1.5, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        bce_with_logits_forward(np.zeros(3), np.zeros((3, 1)))


# -------------------------------------------------------------------------- MSE


@given(dtype=dtypes(), data=st.data(), seed=seeds())
def test_mse_value_gradient_and_dtype(dtype, data, seed):
    pred = data.draw(float_arrays(batch_shapes(min_dims=1, max_dims=3), dtype, scale=100.0))
    target = random_array(pred.shape, seed)  # float64: must not upcast float32 predictions
    loss, cache = mse_forward(pred, target)
    dpred = mse_backward(1.5, cache)
    diff = pred.astype(np.float64) - target.astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss.dtype == dtype and dpred.dtype == dtype
    assert math.isclose(float(loss), float(np.mean(diff**2)), rel_tol=rtol, abs_tol=1e-12)
    np.testing.assert_allclose(dpred, 1.5 * 2 * diff / diff.size, rtol=rtol, atol=1e-12)


@given(pred=normal_arrays(batch_shapes(min_dims=1, max_dims=3)), seed=seeds())
def test_mse_backward_matches_finite_differences(pred, seed):
    errors = gradcheck(
        mse_forward, mse_backward, {"pred": pred},
        kwargs={"target": random_array(pred.shape, seed)}, dout=np.asarray(random_array((), seed)),
    )
    assert errors["pred"] < 1e-6, errors


def test_mse_rejects_mismatched_shapes_and_empty_inputs():
    with pytest.raises(ValueError, match="shape"):
        mse_forward(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        mse_forward(np.zeros((0, 3)), np.zeros((0, 3)))
