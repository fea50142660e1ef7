"""Softmax and log-softmax: gradients, normalisation, stability, masking."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.softmax import (
    log_softmax_backward,
    log_softmax_forward,
    softmax_backward,
    softmax_forward,
)
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    dtypes,
    float_arrays,
    no_fp_warnings,
    normal_arrays,
    random_dout,
    seeds,
    shapes_ending_in,
    sides,
)

SHAPES = shapes_ending_in(sides(1, 6), max_dims=2)


@st.composite
def arrays_and_axis(draw, dtype=np.float64, scale=3.0):
    x = draw(normal_arrays(SHAPES, dtype, scale=scale))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return x, axis


@st.composite
def broadcast_mask_shapes(draw, shape):
    """A shape that broadcasts to ``shape``: some leading axes dropped, some sides set to 1."""
    n_drop = draw(st.integers(0, len(shape) - 1))
    kept = shape[n_drop:]
    return tuple(side if draw(st.booleans()) else 1 for side in kept)


def naive_softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# -------------------------------------------------------------------- gradients


@given(data=arrays_and_axis(), seed=seeds())
def test_softmax_backward_matches_finite_differences(data, seed):
    x, axis = data
    errors = gradcheck(
        softmax_forward, softmax_backward, {"x": x}, kwargs={"axis": axis},
        dout=random_dout(x.shape, seed),
    )
    assert errors["x"] < 1e-6, errors


@given(data=arrays_and_axis(), seed=seeds())
def test_log_softmax_backward_matches_finite_differences(data, seed):
    x, axis = data
    errors = gradcheck(
        log_softmax_forward, log_softmax_backward, {"x": x}, kwargs={"axis": axis},
        dout=random_dout(x.shape, seed),
    )
    assert errors["x"] < 1e-6, errors


@given(data=st.data(), seed=seeds())
def test_masked_softmax_backward_matches_finite_differences(data, seed):
    x = data.draw(normal_arrays(SHAPES, scale=3.0))
    mshape = data.draw(broadcast_mask_shapes(x.shape))
    rng = np.random.default_rng(seed)
    if data.draw(st.booleans(), label="boolean mask"):
        mask = rng.random(mshape) < 0.7
    else:
        mask = np.where(rng.random(mshape) < 0.7, rng.normal(size=mshape), -np.inf)
    errors = gradcheck(
        softmax_forward, softmax_backward, {"x": x}, kwargs={"mask": mask},
        dout=random_dout(x.shape, seed),
    )
    assert errors["x"] < 1e-6, errors


@given(data=st.data(), seed=seeds())
def test_masked_log_softmax_backward_matches_finite_differences(data, seed):
    # Masked outputs are -inf, so the check reads the kept outputs only: the
    # objective is sum over kept positions of out * dout.
    x = data.draw(normal_arrays(SHAPES, scale=3.0))
    mshape = data.draw(broadcast_mask_shapes(x.shape))
    keep = np.random.default_rng(seed).random(mshape) < 0.7
    kept = np.broadcast_to(keep, x.shape)

    def forward(x):
        out, cache = log_softmax_forward(x, mask=keep)
        return np.where(kept, out, 0.0), cache

    dout = random_dout(x.shape, seed)
    errors = gradcheck(forward, log_softmax_backward, {"x": x}, dout=dout)
    assert errors["x"] < 1e-6, errors
    # Masked positions get exactly zero gradient, whatever dout holds there.
    dx = log_softmax_backward(dout, log_softmax_forward(x, mask=keep)[1])
    assert np.all(dx[~kept] == 0.0)


# --------------------------------------------------------------------- values


@given(x=float_arrays(SHAPES, dtypes(), scale=1e4), data=st.data())
def test_softmax_rows_sum_to_one(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    with no_fp_warnings():
        y, _ = softmax_forward(x, axis=axis)
    assert y.dtype == x.dtype
    assert np.all(y >= 0)
    n = x.shape[axis]
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, atol=4 * n * np.finfo(x.dtype).eps)


@given(x=float_arrays(SHAPES, scale=20.0), data=st.data())
def test_softmax_is_invariant_to_a_per_row_constant(x, data):
    c = data.draw(float_arrays(x.shape[:-1] + (1,), scale=100.0))
    y0, _ = softmax_forward(x)
    y1, _ = softmax_forward(x + c)
    np.testing.assert_allclose(y1, y0, atol=1e-12, rtol=1e-10)


@given(x=float_arrays(SHAPES, scale=30.0))
def test_softmax_matches_naive_formula(x):
    np.testing.assert_allclose(softmax_forward(x)[0], naive_softmax(x, -1), rtol=1e-13, atol=1e-15)


@given(x=float_arrays(SHAPES, dtypes(), scale=40.0))
def test_log_softmax_equals_log_of_softmax(x):
    out, _ = log_softmax_forward(x)
    y, _ = softmax_forward(x)
    eps = np.finfo(x.dtype).eps
    np.testing.assert_allclose(np.exp(out), y, rtol=16 * eps * x.shape[-1], atol=1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_is_finite_and_exact_for_huge_logits(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    with no_fp_warnings():
        out, cache = log_softmax_forward(x)
        dx = log_softmax_backward(np.ones_like(x), cache)
        y, ycache = softmax_forward(x)
        dy = softmax_backward(np.ones_like(x), ycache)
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(out[0], np.array([0.0, -2e4, -1e4], dtype=dtype))
    np.testing.assert_allclose(out[1], -np.log(3.0), rtol=1e-6)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dy))
    np.testing.assert_array_equal(y[0], np.array([1.0, 0.0, 0.0], dtype=dtype))


# -------------------------------------------------------------------- masking


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fully_masked_rows_give_zeros_and_zero_gradient(kind, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5)).astype(dtype)
    keep = rng.random((3, 5)) < 0.6
    keep[1] = False  # row 1 of every batch is fully masked
    keep[0, 0] = True
    mask = keep if kind == "bool" else np.where(keep, 0.0, -np.inf)
    dout = rng.normal(size=x.shape).astype(dtype)
    with no_fp_warnings():
        y, cache = softmax_forward(x, mask=mask)
        dx = softmax_backward(dout, cache)
        out, lcache = log_softmax_forward(x, mask=mask)
        ldx = log_softmax_backward(dout, lcache)
    assert y.dtype == dtype and dx.dtype == dtype and out.dtype == dtype and ldx.dtype == dtype
    assert not np.isnan(y).any() and not np.isnan(dx).any() and not np.isnan(ldx).any()
    np.testing.assert_array_equal(y[:, 1], 0.0)
    np.testing.assert_array_equal(dx[:, 1], 0.0)
    np.testing.assert_array_equal(out[:, 1], -np.inf)
    np.testing.assert_array_equal(ldx[:, 1], 0.0)
    # Elsewhere: masked entries are 0 / -inf, kept ones renormalise among themselves.
    kept = np.broadcast_to(keep, x.shape)
    assert np.all(y[~kept] == 0) and np.all(out[~kept] == -np.inf)
    np.testing.assert_allclose(y[:, 0].sum(-1), 1.0, rtol=1e-6)
    ref = naive_softmax(np.where(kept, x.astype(np.float64), -np.inf)[:, 0], -1)
    np.testing.assert_allclose(y[:, 0], ref, rtol=1e-5 if dtype == np.float32 else 1e-13)


@given(x=normal_arrays(SHAPES), data=st.data())
def test_boolean_and_additive_masks_agree(x, data):
    mshape = data.draw(broadcast_mask_shapes(x.shape))
    keep = np.random.default_rng(data.draw(seeds())).random(mshape) < 0.5
    y_bool, _ = softmax_forward(x, mask=keep)
    y_add, _ = softmax_forward(x, mask=np.where(keep, 0.0, -np.inf))
    np.testing.assert_array_equal(y_bool, y_add)


@given(x=normal_arrays(SHAPES), data=st.data())
def test_additive_mask_adds_to_the_logits(x, data):
    bias = data.draw(normal_arrays(data.draw(broadcast_mask_shapes(x.shape)), scale=3.0))
    np.testing.assert_allclose(
        softmax_forward(x, mask=bias)[0], softmax_forward(x + bias)[0], rtol=1e-13, atol=1e-16
    )


def test_float64_mask_keeps_float32_dtype():
    x = np.zeros((2, 3), dtype=np.float32)
    y, cache = softmax_forward(x, mask=np.zeros((2, 3)))
    out, lcache = log_softmax_forward(x, mask=np.zeros(3))
    assert y.dtype == out.dtype == np.float32
    assert softmax_backward(np.ones((2, 3)), cache).dtype == np.float32
    assert log_softmax_backward(np.ones((2, 3)), lcache).dtype == np.float32


def test_bad_masks_are_rejected():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="broadcast"):
        softmax_forward(x, mask=np.ones((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="broadcast"):
        log_softmax_forward(x, mask=np.ones((2, 3, 1), dtype=bool))
    with pytest.raises(TypeError, match="boolean"):
        softmax_forward(x, mask=np.ones((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="floating"):
        softmax_forward(np.zeros((2, 3), dtype=np.int64))
