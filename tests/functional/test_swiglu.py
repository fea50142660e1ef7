"""SwiGLU: h = silu(gate) ⊙ up against its formula, backward against finite differences."""

import numpy as np
import pytest
from hypothesis import given

from numpyllm.functional.swiglu import (
    silu_backward,
    silu_forward,
    swiglu_backward,
    swiglu_forward,
    swiglu_inference,
)
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    dtypes,
    float_arrays,
    normal_arrays,
    random_array,
    random_dout,
    seeds,
    shapes_ending_in,
    sides,
)


@given(gate=normal_arrays(shapes_ending_in(sides(1, 6)), scale=3.0), seed=seeds())
def test_swiglu_backward_matches_finite_differences(gate, seed):
    up = random_array(gate.shape, seed, scale=2.0)
    errors = gradcheck(swiglu_forward, swiglu_backward, {"gate": gate, "up": up},
                       dout=random_dout(gate.shape, seed))  # fmt: skip
    assert max(errors.values()) < 1e-7, errors


@given(g=normal_arrays(shapes_ending_in(sides(1, 6)), scale=4.0), seed=seeds())
def test_silu_backward_matches_finite_differences(g, seed):
    errors = gradcheck(silu_forward, silu_backward, {"g": g}, dout=random_dout(g.shape, seed))
    assert errors["g"] < 1e-7, errors


@given(gate=float_arrays(shapes_ending_in(sides(1, 5)), dtype=dtypes(), scale=60.0), seed=seeds())
def test_forward_matches_formula_without_overflow_and_keeps_dtype(gate, seed):
    up = random_array(gate.shape, seed, gate.dtype)
    g = gate.astype(np.float64)
    expected = g / (1.0 + np.exp(-g)) * up
    with np.errstate(over="raise", invalid="raise"):
        h, cache = swiglu_forward(gate, up)
        dgate, dup = swiglu_backward(np.ones_like(h), cache)
    tol = 1e-12 if gate.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(h, expected, rtol=tol, atol=tol)
    assert h.dtype == dgate.dtype == dup.dtype == gate.dtype
    np.testing.assert_allclose(swiglu_inference(gate.copy(), up), h, rtol=0, atol=0)


def test_silu_limits():
    h, _ = silu_forward(np.array([-50.0, 0.0, 50.0]))
    np.testing.assert_allclose(h, [0.0, 0.0, 50.0], atol=1e-15)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="one shape"):
        swiglu_forward(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="floating"):
        swiglu_forward(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="floating"):
        silu_forward(np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("shape", [(3, 5), (2, 70_000)], ids=["one chunk", "several chunks"])
def test_overwriting_backward_equals_the_plain_one(shape):
    rng = np.random.default_rng(0)
    gate, up, dout = (rng.standard_normal(shape).astype(np.float32) * 3 for _ in range(3))
    _, cache = swiglu_forward(gate, up)
    dgate, dup = swiglu_backward(dout, cache)
    spent_dout = dout.copy()
    dgate2, dup2 = swiglu_backward(spent_dout, cache, overwrite=True)
    assert dgate2 is spent_dout and dup2 is cache[2]  # no new (..., d_ff) arrays
    np.testing.assert_array_equal(dgate2, dgate)
    np.testing.assert_array_equal(dup2, dup)
