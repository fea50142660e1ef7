"""Linear: y = x W + b over any leading axes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.linear import linear_backward, linear_forward
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    batch_shapes,
    dtypes,
    random_array,
    random_dout,
    seeds,
)

D_IN = st.integers(1, 5)
D_OUT = st.integers(1, 5)


@given(batch=batch_shapes(), d_in=D_IN, d_out=D_OUT, with_bias=st.booleans(), seed=seeds())
def test_backward_matches_finite_differences(batch, d_in, d_out, with_bias, seed):
    inputs = {
        "x": random_array(batch + (d_in,), seed),
        "weight": random_array((d_in, d_out), seed + 1),
    }
    if with_bias:
        inputs["bias"] = random_array((d_out,), seed + 2)
    errors = gradcheck(
        linear_forward, linear_backward, inputs, dout=random_dout(batch + (d_out,), seed)
    )
    assert max(errors.values()) < 1e-6, errors
    _, cache = linear_forward(**inputs)
    dbias = linear_backward(random_dout(batch + (d_out,), seed), cache)[2]
    assert (dbias is None) == (not with_bias)


@given(batch=batch_shapes(), d_in=D_IN, d_out=D_OUT, seed=seeds())
def test_forward_matches_einsum(batch, d_in, d_out, seed):
    x = random_array(batch + (d_in,), seed)
    w = random_array((d_in, d_out), seed + 1)
    b = random_array((d_out,), seed + 2)
    expected = np.einsum("...i,ij->...j", x, w) + b
    np.testing.assert_allclose(linear_forward(x, w, b)[0], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(linear_forward(x, w)[0], expected - b, rtol=1e-12, atol=1e-12)


@given(batch=batch_shapes(), d_in=D_IN, d_out=D_OUT, dtype=dtypes(), seed=seeds())
def test_dtype_and_shapes_are_kept(batch, d_in, d_out, dtype, seed):
    x = random_array(batch + (d_in,), seed, dtype)
    w = random_array((d_in, d_out), seed + 1, dtype)
    b = random_array((d_out,), seed + 2, dtype)
    out, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(random_dout(batch + (d_out,), seed, dtype), cache)
    assert out.dtype == dx.dtype == dw.dtype == db.dtype == dtype
    assert out.shape == batch + (d_out,)
    assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, b.shape)


def test_mismatched_inner_dimension_is_rejected():
    with pytest.raises(ValueError, match="last dimension 3 but weight expects 4"):
        linear_forward(np.zeros((2, 3)), np.zeros((4, 5)))
