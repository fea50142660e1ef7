"""Inverted dropout: identity in eval, reproducible masks, unbiased, gradient = mask · scale."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.dropout import dropout_backward, dropout_forward
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    batch_shapes,
    dtypes,
    float_arrays,
    normal_arrays,
    random_dout,
    seeds,
)

PROBS = st.floats(0.05, 0.95)


@given(x=float_arrays(batch_shapes(max_dims=3), dtypes()), p=PROBS, seed=seeds())
def test_eval_mode_and_p_zero_are_the_identity(x, p, seed):
    rng = np.random.default_rng(seed)
    state = rng.bit_generator.state
    for kwargs in ({"p": p, "training": False}, {"p": 0.0, "training": True}):
        out, cache = dropout_forward(x, rng=rng, **kwargs)
        assert out is x and cache is None
        dout = random_dout(x.shape, seed, x.dtype)
        assert dropout_backward(dout, cache) is dout
    assert rng.bit_generator.state == state  # evaluation draws nothing


@given(x=normal_arrays(batch_shapes(min_dims=1, max_dims=3, max_side=6)), p=PROBS, seed=seeds())
def test_same_seed_same_mask(x, p, seed):
    out1, cache1 = dropout_forward(x, p, np.random.default_rng(seed))
    out2, cache2 = dropout_forward(x, p, np.random.default_rng(seed))
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(cache1, cache2)


def test_different_seeds_different_masks():
    x = np.ones(1000)
    out1, _ = dropout_forward(x, 0.5, np.random.default_rng(1))
    out2, _ = dropout_forward(x, 0.5, np.random.default_rng(2))
    assert np.any(out1 != out2)


@given(
    x=float_arrays(batch_shapes(max_dims=3), dtypes(), min_magnitude=1e-3), p=PROBS, seed=seeds()
)
def test_survivors_are_scaled_and_gradient_is_mask_times_scale(x, p, seed):
    out, cache = dropout_forward(x, p, np.random.default_rng(seed))
    kept = out != 0
    scale = 1.0 / (1.0 - p)
    rtol = 4 * np.finfo(x.dtype).eps
    np.testing.assert_allclose(out[kept], x[kept] * scale, rtol=rtol)
    dout = random_dout(x.shape, seed, x.dtype)
    dx = dropout_backward(dout, cache)
    assert out.dtype == x.dtype and dx.dtype == x.dtype and dx.shape == x.shape
    np.testing.assert_allclose(dx, np.where(kept, dout * scale, 0.0), rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_expected_value_and_drop_rate(dtype, p):
    n = 400_000
    x = np.ones(n, dtype=dtype)
    out, cache = dropout_forward(x, p, np.random.default_rng(123))
    assert out.dtype == cache.dtype == dtype
    # Each output is 0 or 1/(1-p): mean 1, variance p/(1-p); allow five standard errors.
    assert abs(out.mean(dtype=np.float64) - 1.0) < 5 * np.sqrt(p / (1 - p) / n)
    assert abs(np.mean(out == 0) - p) < 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937])
def test_drop_rate_with_any_bit_generator(bit_generator):
    # 64-bit generators feed the mask two uint32 per raw draw; MT19937 (32 random bits per
    # raw draw) goes through Generator.integers: both must drop at rate p, independently.
    n, p = 400_000, 0.3
    out, _ = dropout_forward(np.ones(n), p, np.random.Generator(bit_generator(7)))
    dropped = out == 0
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    # neighbours (the two halves of one raw draw) are independent: P(both dropped) = p^2
    both = np.mean(dropped[0::2] & dropped[1::2])
    assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / (n // 2))


@given(x=normal_arrays(batch_shapes(max_dims=3)), p=PROBS, seed=seeds())
def test_backward_matches_finite_differences(x, p, seed):
    # A fresh generator with the same seed on every call: the mask is fixed,
    # so dropout is linear in x and the check is exact up to round-off.
    def forward(x):
        return dropout_forward(x, p, np.random.default_rng(seed))

    errors = gradcheck(forward, dropout_backward, {"x": x}, dout=random_dout(x.shape, seed))
    assert errors["x"] < 1e-6, errors


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_p_is_rejected(p):
    with pytest.raises(ValueError, match="p must be a probability"):
        dropout_forward(np.ones(3), p, np.random.default_rng(0))


def test_bad_rng_and_dtype_are_rejected():
    with pytest.raises(TypeError, match="np.random.Generator"):
        dropout_forward(np.ones(3), 0.5, np.random.RandomState(0))
    with pytest.raises(TypeError, match="np.random.Generator"):
        dropout_forward(np.ones(3), 0.5, 0)
    with pytest.raises(TypeError, match="floating"):
        dropout_forward(np.ones(3, dtype=np.int64), 0.5, np.random.default_rng(0))
