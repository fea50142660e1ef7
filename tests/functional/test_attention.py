"""Scaled dot-product attention: forward against a per-row loop, backward against finite
differences, causal and masking rules, dtypes and errors."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.attention import (
    attention_backward,
    attention_forward,
    attention_inference,
)
from numpyllm.gradcheck import gradcheck

# Any RuntimeWarning (0/0, inf - inf, overflow) anywhere in this file is a failure.
pytestmark = pytest.mark.filterwarnings("error")

lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def broadcastable_to(draw, shape: tuple[int, ...], keep: int = 0) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape``: leading axes dropped and some axes set to 1.

    The last ``keep`` axes are never dropped (they may still become 1).
    """
    n_drop = draw(st.integers(0, len(shape) - keep))
    return tuple(1 if draw(st.booleans()) else n for n in shape[n_drop:])


@st.composite
def attention_problems(draw, max_t: int = 5, dtype=np.float64) -> dict:
    """q, k, v with broadcasting leading axes, Tq and Tk drawn independently, optional mask/bias.

    Masks include fully masked rows (a row forced to False, or a low keep rate).
    """
    lead = draw(lead_shapes)
    tq, tk = draw(st.integers(1, max_t)), draw(st.integers(1, max_t))
    d, dv = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q_lead, k_lead = draw(broadcastable_to(lead)), draw(broadcastable_to(lead))
    v_lead = k_lead if draw(st.booleans()) else draw(broadcastable_to(lead))
    problem = {
        "q": rng.standard_normal((*q_lead, tq, d)).astype(dtype),
        "k": rng.standard_normal((*k_lead, tk, d)).astype(dtype),
        "v": rng.standard_normal((*v_lead, tk, dv)).astype(dtype),
        "causal": draw(st.booleans()),
        "scale": draw(st.sampled_from([None, 1.0, 0.3])),
        "mask": None,
        "bias": None,
    }
    full = (*lead, tq, tk)
    if draw(st.booleans()):
        keep_rate = draw(st.sampled_from([0.0, 0.5, 0.9]))  # 0.0: everything masked
        mask = rng.random(draw(broadcastable_to(full, keep=2))) < keep_rate
        if draw(st.booleans()):
            mask[..., rng.integers(mask.shape[-2]), :] = False  # a fully masked query row
        problem["mask"] = mask
    if draw(st.booleans()):
        problem["bias"] = rng.standard_normal(draw(broadcastable_to(full, keep=2))).astype(dtype)
    return problem


def naive_attention(q, k, v, causal=False, mask=None, bias=None, scale=None) -> np.ndarray:
    """One query row at a time, in plain Python floats, over the allowed keys only."""
    tq, tk, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = np.ones((tq, tk), bool) if mask is None else mask
    bias = np.zeros((tq, tk)) if bias is None else bias
    lead = np.broadcast_shapes(*(a.shape[:-2] for a in (q, k, v, mask, bias)))
    q, k, v = (np.broadcast_to(a, (*lead, *a.shape[-2:])) for a in (q, k, v))
    mask, bias = (np.broadcast_to(a, (*lead, tq, tk)) for a in (mask, bias))
    out = np.zeros((*lead, tq, dv))
    for idx in np.ndindex(*lead):
        for i in range(tq):
            keys = [j for j in range(tk) if mask[idx][i, j] and (not causal or j <= i + tk - tq)]
            if not keys:
                continue  # nothing to attend to: the row stays zero
            scores = [
                scale * float(np.dot(q[idx][i], k[idx][j])) + float(bias[idx][i, j]) for j in keys
            ]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            out[idx][i] = sum(w / total * v[idx][j] for w, j in zip(weights, keys))
    return out


def run(problem: dict) -> tuple[np.ndarray, tuple]:
    return attention_forward(**problem)


@given(attention_problems())
def test_forward_matches_naive_reference(problem):
    out, _ = run(problem)
    np.testing.assert_allclose(out, naive_attention(**problem), rtol=1e-12, atol=1e-12)


@given(attention_problems(max_t=4))
def test_backward_matches_finite_differences(problem):
    names = ["q", "k", "v"] + (["bias"] if problem["bias"] is not None else [])
    inputs = {name: problem[name] for name in names}
    kwargs = {key: value for key, value in problem.items() if key not in inputs}
    errors = gradcheck(
        attention_forward, attention_backward, inputs, kwargs=kwargs, rng=np.random.default_rng(1)
    )
    assert max(errors.values()) < 1e-6, errors


def test_dbias_is_none_without_bias_and_shaped_like_bias_with_it(rng):
    q, k, v = (
        rng.standard_normal((2, 3, 4, 5)),
        rng.standard_normal((2, 3, 6, 5)),
        rng.standard_normal((2, 3, 6, 2)),
    )
    out, cache = attention_forward(q, k, v)
    assert attention_backward(np.ones_like(out), cache)[3] is None
    for bias_shape in [(1, 3, 4, 6), (3, 4, 6), (4, 6), (3, 1, 6), (2, 1, 1, 1)]:
        out, cache = attention_forward(q, k, v, bias=rng.standard_normal(bias_shape))
        assert attention_backward(rng.standard_normal(out.shape), cache)[3].shape == bias_shape


@st.composite
def causal_cases(draw) -> tuple:
    """(q, k, v, t): Tq <= Tk (Tq == Tk half the time) and a query position t."""
    lead = draw(lead_shapes)
    tk = draw(st.integers(1, 6))
    tq = tk if draw(st.booleans()) else draw(st.integers(1, tk))
    d, dv = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((*lead, tq, d))
    k = rng.standard_normal((*lead, tk, d))
    v = rng.standard_normal((*lead, tk, dv))
    return q, k, v, draw(st.integers(0, tq - 1)), rng


@given(causal_cases())
def test_causal_output_ignores_the_future(case):
    q, k, v, t, rng = case
    last_seen = t + k.shape[-2] - q.shape[-2]  # end-aligned: query t sees keys 0..last_seen
    out, _ = attention_forward(q, k, v, causal=True)
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    q2[..., t + 1 :, :] = rng.standard_normal(q2[..., t + 1 :, :].shape)
    k2[..., last_seen + 1 :, :] = rng.standard_normal(k2[..., last_seen + 1 :, :].shape)
    v2[..., last_seen + 1 :, :] = rng.standard_normal(v2[..., last_seen + 1 :, :].shape)
    out2, _ = attention_forward(q2, k2, v2, causal=True)
    np.testing.assert_array_equal(out2[..., : t + 1, :], out[..., : t + 1, :])
    np.testing.assert_allclose(out, naive_attention(q, k, v, causal=True), rtol=1e-12, atol=1e-12)


@given(causal_cases())
def test_causal_gradient_of_the_past_outputs_is_zero_on_the_future(case):
    q, k, v, t, rng = case
    last_seen = t + k.shape[-2] - q.shape[-2]
    out, cache = attention_forward(q, k, v, causal=True)
    dout = rng.standard_normal(out.shape)
    dout[..., t + 1 :, :] = 0.0  # the loss reads outputs 0..t only
    dq, dk, dv, _ = attention_backward(dout, cache)
    assert not dq[..., t + 1 :, :].any()
    assert not dk[..., last_seen + 1 :, :].any()
    assert not dv[..., last_seen + 1 :, :].any()
    assert dv[..., : last_seen + 1, :].any()  # while the visible values do get gradient


def test_causal_with_one_query_sees_every_key(rng):
    q, k, v = (
        rng.standard_normal((2, 1, 4)),
        rng.standard_normal((2, 7, 4)),
        rng.standard_normal((2, 7, 3)),
    )
    np.testing.assert_allclose(
        attention_forward(q, k, v, causal=True)[0], attention_forward(q, k, v)[0], rtol=1e-15
    )


def test_causal_with_more_queries_than_keys_zeros_the_first_rows(rng):
    q, k, v = rng.standard_normal((5, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    out, cache = attention_forward(q, k, v, causal=True)
    assert not out[:3].any()  # queries 0..2 come before every key
    np.testing.assert_allclose(out, naive_attention(q, k, v, causal=True), rtol=1e-12)
    dq, dk, dv, _ = attention_backward(rng.standard_normal(out.shape), cache)
    assert not dq[:3].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fully_masked_rows_give_zeros_and_zero_gradients(rng, dtype):
    q = rng.standard_normal((2, 3, 4, 8)).astype(dtype) * 30  # large scores too
    k = rng.standard_normal((2, 3, 5, 8)).astype(dtype) * 30
    v = rng.standard_normal((2, 3, 5, 6)).astype(dtype)
    bias = rng.standard_normal((3, 4, 5)).astype(dtype)
    mask = rng.random((2, 1, 4, 5)) < 0.7
    mask[:, :, 1, :] = False  # query 1 sees nothing
    mask[1, :, :, :] = False  # batch 1 sees nothing at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, cache = attention_forward(q, k, v, mask=mask, bias=bias)
        dq, dk, dv, dbias = attention_backward(rng.standard_normal(out.shape).astype(dtype), cache)
    assert not out[:, :, 1].any() and not out[1].any()
    for grad in (dq, dk, dv, dbias):
        assert np.isfinite(grad).all() and grad.dtype == dtype
    assert not dq[:, :, 1].any() and not dq[1].any()
    assert not dk[1].any() and not dv[1].any()
    assert not dbias[:, 1].any()
    np.testing.assert_allclose(
        out,
        naive_attention(q, k, v, mask=mask, bias=bias),
        rtol=1e-4 if dtype == np.float32 else 1e-12,
    )


def test_minus_infinity_in_bias_masks_like_the_boolean_mask(rng):
    q, k, v = (
        rng.standard_normal((3, 4, 2)),
        rng.standard_normal((3, 5, 2)),
        rng.standard_normal((3, 5, 2)),
    )
    mask = rng.random((3, 4, 5)) < 0.5
    mask[0, 2] = False
    bias = np.where(mask, 0.0, -np.inf)
    out_bias, cache = attention_forward(q, k, v, bias=bias)
    out_mask, _ = attention_forward(q, k, v, mask=mask)
    np.testing.assert_allclose(out_bias, out_mask, rtol=1e-15)
    dbias = attention_backward(rng.standard_normal(out_bias.shape), cache)[3]
    assert np.isfinite(dbias).all() and not dbias[~mask].any()


def test_large_scores_do_not_overflow(rng):
    q = rng.standard_normal((4, 3)).astype(np.float32) * 1e3
    k = rng.standard_normal((6, 3)).astype(np.float32) * 1e3
    v = rng.standard_normal((6, 2)).astype(np.float32)
    out, cache = attention_forward(q, k, v, causal=True)
    grads = attention_backward(np.ones_like(out), cache)
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads[:3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(rng, dtype):
    q, k = (
        rng.standard_normal((2, 2, 3, 4)).astype(dtype),
        rng.standard_normal((2, 2, 5, 4)).astype(dtype),
    )
    v = rng.standard_normal((2, 2, 5, 3)).astype(dtype)
    bias = rng.standard_normal((2, 3, 5))  # float64 bias: cast to q's dtype, never upcasting
    mask = rng.random((2, 1, 1, 5)) < 0.8
    out, cache = attention_forward(q, k, v, causal=True, mask=mask, bias=bias)
    assert out.dtype == dtype
    grads = attention_backward(rng.standard_normal(out.shape).astype(dtype), cache)
    assert [g.dtype for g in grads] == [dtype] * 4


def test_float32_agrees_with_float64(rng):
    q, k, v = (
        rng.standard_normal((2, 6, 8)),
        rng.standard_normal((2, 9, 8)),
        rng.standard_normal((2, 9, 4)),
    )
    out64, _ = attention_forward(q, k, v, causal=True)
    out32, _ = attention_forward(*(a.astype(np.float32) for a in (q, k, v)), causal=True)
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-6)


def test_empty_key_axis_gives_zeros(rng):
    out, cache = attention_forward(rng.standard_normal((3, 4)), np.zeros((0, 4)), np.zeros((0, 2)))
    assert out.shape == (3, 2) and not out.any()
    dq, dk, dv, _ = attention_backward(np.ones((3, 2)), cache)
    assert dq.shape == (3, 4) and not dq.any() and dk.shape == (0, 4) and dv.shape == (0, 2)


@pytest.mark.parametrize(
    "shapes, kwargs, error, message",
    [
        (((2, 3, 4), (2, 5, 3), (2, 5, 4)), {}, ValueError, "same feature size d"),
        (((2, 3, 4), (2, 5, 4), (2, 6, 4)), {}, ValueError, "same number of keys"),
        (((2, 3, 4), (3, 5, 4), (3, 5, 4)), {}, ValueError, "do not broadcast"),
        (((4,), (5, 4), (5, 4)), {}, ValueError, r"\(\.\.\., T, d\)"),
        (((3, 4), (5, 4), (5, 4)), {"mask": np.ones((3, 4), bool)}, ValueError, "mask of shape"),
        (((3, 4), (5, 4), (5, 4)), {"bias": np.ones((2, 5))}, ValueError, "bias of shape"),
        (((3, 4), (5, 4), (5, 4)), {"mask": np.ones((3, 5))}, TypeError, "boolean"),
    ],
)
def test_bad_inputs_raise_clear_errors(rng, shapes, kwargs, error, message):
    q, k, v = (rng.standard_normal(shape) for shape in shapes)
    with pytest.raises(error, match=message):
        attention_forward(q, k, v, **kwargs)


def test_mixed_dtypes_raise_type_error(rng):
    q = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="share one dtype"):
        attention_forward(q, rng.standard_normal((5, 4)), rng.standard_normal((5, 4)))


# ---- attention_inference: the forward's output alone, for generation ----------------------
@st.composite
def inference_problems(draw) -> dict:
    """q, k, v of one dtype with Tq <= Tk (no fully masked row), k / v leading axes broadcast
    (e.g. a head axis of size 1 shared by every head), q sometimes a strided view as the
    decoder passes it."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch, heads = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lead = draw(st.sampled_from([(), (heads,), (batch, heads)]))
    tk = draw(st.integers(1, 6))
    tq = draw(st.integers(1, tk))
    d, dv = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k_lead = draw(broadcastable_to(lead))
    v_lead = k_lead if draw(st.booleans()) else draw(broadcastable_to(lead))
    if draw(st.booleans()):  # a transposed view, not C-contiguous
        q = (rng.standard_normal((*lead, d, tq)) * 2).astype(dtype).swapaxes(-1, -2)
    else:
        q = (rng.standard_normal((*lead, tq, d)) * 2).astype(dtype)
    return {
        "q": q,
        "k": (rng.standard_normal((*k_lead, tk, d)) * 2).astype(dtype),
        "v": rng.standard_normal((*v_lead, tk, dv)).astype(dtype),
        "causal": draw(st.booleans()),
        "scale": draw(st.sampled_from([None, 1.0, 0.3, 2.5])),
    }


@given(inference_problems())
def test_inference_equals_the_forwards_output_and_leaves_its_inputs_alone(problem):
    copies = {name: problem[name].copy() for name in ("q", "k", "v")}
    out = attention_inference(**problem)
    expected, _ = attention_forward(**problem)
    assert out.dtype == problem["q"].dtype
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)  # the same arithmetic, so the same bits
    for name, copy in copies.items():
        np.testing.assert_array_equal(problem[name], copy)
    if problem["q"].dtype == np.float64:  # and not merely equal to itself: the true values
        np.testing.assert_allclose(out, naive_attention(**problem), rtol=1e-12, atol=1e-12)


def test_inference_causal_with_one_query_sees_every_key_and_with_equal_lengths_is_triangular(rng):
    q, k, v = (rng.standard_normal(s) for s in [(2, 1, 4), (2, 5, 4), (2, 5, 3)])
    np.testing.assert_array_equal(
        attention_inference(q, k, v, causal=True), attention_inference(q, k, v)
    )
    q = rng.standard_normal((2, 5, 4))
    out = attention_inference(q, k, v, causal=True)
    np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-15)  # query 0 sees key 0 only
    assert not np.allclose(out, attention_inference(q, k, v))
