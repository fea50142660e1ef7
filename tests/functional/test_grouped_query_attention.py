"""Grouped-query attention: equal to multi-head attention on repeated keys and values, the
shared heads' gradients against finite differences, MQA and MHA as the ends, masks, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.attention import attention_backward, attention_forward
from numpyllm.functional.grouped_query_attention import (
    grouped_query_attention_backward,
    grouped_query_attention_forward,
    grouped_query_attention_inference,
)
from numpyllm.gradcheck import gradcheck

pytestmark = pytest.mark.filterwarnings("error")


@st.composite
def gqa_problems(draw, dtype=np.float64) -> dict:
    kv_heads, groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    tq, tk = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads = kv_heads * groups
    problem = {
        "q": rng.standard_normal((batch, heads, tq, d)).astype(dtype),
        "k": rng.standard_normal((batch, kv_heads, tk, d)).astype(dtype),
        "v": rng.standard_normal((batch, kv_heads, tk, d + 1)).astype(dtype),
        "causal": draw(st.booleans()) and tk >= tq,
        "mask": None,
        "scale": draw(st.sampled_from([None, 0.5])),
    }
    kind = draw(st.sampled_from(["none", "padding", "per-head"]))
    if kind == "padding":  # (B, 1, 1, Tk), every row keeps its last key
        keep = rng.random((batch, 1, 1, tk)) < 0.7
        keep[..., -1] = True
        problem["mask"] = keep
    elif kind == "per-head":
        problem["mask"] = rng.random((batch, heads, tq, tk)) < 0.7
    return problem


def repeated(a: np.ndarray, groups: int) -> np.ndarray:
    """transformers' repeat_kv: head j copied to heads j*G .. j*G + G - 1."""
    return np.repeat(a, groups, axis=1)


@given(problem=gqa_problems())
def test_equals_multi_head_attention_on_repeated_heads(problem):
    q, k, v = problem["q"], problem["k"], problem["v"]
    groups = q.shape[1] // k.shape[1]
    kwargs = {n: problem[n] for n in ("causal", "mask", "scale")}
    out, cache = grouped_query_attention_forward(q, k, v, **kwargs)
    ref, ref_cache = attention_forward(q, repeated(k, groups), repeated(v, groups), **kwargs)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)

    dout = np.random.default_rng(1).standard_normal(out.shape)
    dq, dk, dv = grouped_query_attention_backward(dout, cache)
    rq, rk, rv, _ = attention_backward(dout, ref_cache)
    np.testing.assert_allclose(dq, rq, rtol=1e-10, atol=1e-12)
    # the shared head's gradient is the sum over the group's copies
    sum_groups = lambda g: g.reshape(g.shape[0], -1, groups, *g.shape[2:]).sum(2)  # noqa: E731
    np.testing.assert_allclose(dk, sum_groups(rk), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dv, sum_groups(rv), rtol=1e-10, atol=1e-12)


@given(problem=gqa_problems())
def test_backward_matches_finite_differences(problem):
    inputs = {n: problem[n] for n in ("q", "k", "v")}
    kwargs = {n: problem[n] for n in ("causal", "mask", "scale")}
    errors = gradcheck(grouped_query_attention_forward, grouped_query_attention_backward,
                       inputs, kwargs=kwargs)  # fmt: skip
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("kv_heads", [1, 4], ids=["multi-query", "multi-head"])
def test_the_two_ends_multi_query_and_multi_head(kv_heads):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 3, 5))
    k, v = rng.standard_normal((2, kv_heads, 3, 5)), rng.standard_normal((2, kv_heads, 3, 5))
    out, _ = grouped_query_attention_forward(q, k, v, causal=True)
    if kv_heads == 4:
        ref, _ = attention_forward(q, k, v, causal=True)
    else:  # one key/value head broadcast over every query head
        ref, _ = attention_forward(q, k[:, :1], v[:, :1], causal=True)
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("tq", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_equals_the_forward_and_keeps_dtype(tq, dtype):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 6, tq, 4)).astype(dtype)
    k, v = (rng.standard_normal((2, 2, 5, 4)).astype(dtype) for _ in range(2))
    out, _ = grouped_query_attention_forward(q, k, v, causal=True)
    fast = grouped_query_attention_inference(q, k, v, causal=True)
    assert fast.dtype == out.dtype == dtype
    np.testing.assert_allclose(fast, out, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_bad_inputs_raise_clear_errors():
    q, k = np.zeros((1, 3, 2, 4)), np.zeros((1, 2, 2, 4))
    with pytest.raises(ValueError, match="multiple"):
        grouped_query_attention_forward(q, k, k)
    with pytest.raises(ValueError, match="leading axes"):
        grouped_query_attention_forward(np.zeros((2, 2, 2, 4)), k, k)
    with pytest.raises(ValueError, match="does not broadcast"):
        grouped_query_attention_forward(np.zeros((1, 4, 2, 4)), k, k, mask=np.ones(3, bool))
    with pytest.raises(TypeError, match="boolean"):
        grouped_query_attention_forward(np.zeros((1, 4, 2, 4)), k, k, mask=np.ones(2))


@pytest.mark.parametrize("padding", [False, True])
def test_causal_blocks_equal_multi_head_attention_on_repeated_heads(padding):
    # T = 160 > 128: causal attention runs in blocks, skipping those in a query block's future
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 160, 3))
    k, v = rng.standard_normal((2, 2, 160, 3)), rng.standard_normal((2, 2, 160, 3))
    mask = rng.random((2, 1, 1, 160)) < 0.8 if padding else None
    out, cache = grouped_query_attention_forward(q, k, v, causal=True, mask=mask)
    ref, ref_cache = attention_forward(q, repeated(k, 2), repeated(v, 2), causal=True, mask=mask)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = grouped_query_attention_backward(dout, cache, out=out)
    rq, rk, rv, _ = attention_backward(dout, ref_cache)
    np.testing.assert_allclose(dq, rq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dk, rk.reshape(2, 2, 2, 160, 3).sum(2), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dv, rv.reshape(2, 2, 2, 160, 3).sum(2), rtol=1e-10, atol=1e-12)
    if not padding:
        fast = grouped_query_attention_inference(q, k, v, causal=True)
        np.testing.assert_allclose(fast, out, rtol=1e-12, atol=1e-12)
