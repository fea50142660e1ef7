"""Multi-head attention: head layout, gradients, the KV cache, dtypes and errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.attention import attention_forward
from numpyllm.functional.multi_head_attention import (
    merge_heads,
    multi_head_attention_backward,
    multi_head_attention_forward,
    present_kv,
    split_heads,
)
from numpyllm.gradcheck import gradcheck

pytestmark = pytest.mark.filterwarnings("error")

PROJECTIONS = ("q", "k", "v", "o")


def make_weights(rng, d_q, d_kv, d_out, inner, inner_v, biases, dtype=np.float64) -> dict:
    """Weights in (d_in, d_out) layout; ``biases`` names the projections that get one."""
    shapes = {"q": (d_q, inner), "k": (d_kv, inner), "v": (d_kv, inner_v), "o": (inner_v, d_out)}
    weights = {f"{p}_weight": rng.standard_normal(s).astype(dtype) for p, s in shapes.items()}
    for p in biases:
        weights[f"{p}_bias"] = rng.standard_normal(shapes[p][1]).astype(dtype)
    return weights


@st.composite
def mha_problems(draw, max_t: int = 4) -> dict:
    """Cross-attention problems: Tq, Tk, model sizes, heads 1-4 and head sizes drawn independently.

    Leading axes 0-2 (x_kv's may broadcast against x_q's); any subset of the
    four projection biases; an optional mask (with fully masked rows) and an
    optional additive bias, each broadcastable to (..., H, Tq, Tk).
    """
    lead = draw(st.lists(st.integers(1, 2), max_size=2).map(tuple))
    kv_lead = lead if draw(st.booleans()) else tuple(1 if draw(st.booleans()) else n for n in lead)
    tq, tk = draw(st.integers(1, max_t)), draw(st.integers(1, max_t))
    n_head = draw(st.integers(1, 4))
    dh, dh_v = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    d_q, d_kv, d_out = (draw(st.integers(1, 4)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    biases = draw(st.lists(st.sampled_from(PROJECTIONS), unique=True))
    full = (*lead, n_head, tq, tk)
    problem = {
        "x_q": rng.standard_normal((*lead, tq, d_q)),
        "x_kv": rng.standard_normal((*kv_lead, tk, d_kv)),
        "weights": make_weights(rng, d_q, d_kv, d_out, n_head * dh, n_head * dh_v, biases),
        "n_head": n_head,
        "causal": draw(st.booleans()),
        "scale": draw(st.sampled_from([None, 1.0])),
        "mask": None,
        "bias": None,
    }
    if draw(st.booleans()):
        shape = tuple(
            1 if draw(st.booleans()) else n for n in full[draw(st.integers(0, len(lead))) :]
        )
        mask = rng.random(shape) < 0.7
        mask[..., rng.integers(shape[-2]), :] = False  # a fully masked query row
        problem["mask"] = mask
    if draw(st.booleans()):
        shape = tuple(
            1 if draw(st.booleans()) else n for n in full[draw(st.integers(0, len(lead))) :]
        )
        problem["bias"] = rng.standard_normal(shape)
    return problem


def naive_multi_head_attention(x_q, x_kv, weights, n_head, **kwargs) -> np.ndarray:
    """Head by head: head h uses columns h*dh:(h+1)*dh of W_q, W_k, W_v and those rows of W_o."""

    def project(x, p):
        bias = weights.get(f"{p}_bias")
        return x @ weights[f"{p}_weight"] + (0.0 if bias is None else bias)

    q, k, v = project(x_q, "q"), project(x_kv, "k"), project(x_kv, "v")
    dh, dh_v = q.shape[-1] // n_head, v.shape[-1] // n_head
    mask, bias = kwargs.pop("mask", None), kwargs.pop("bias", None)

    def head_slice(a, h):  # (..., H | 1, Tq, Tk) -> (..., Tq, Tk) for head h
        return (
            None
            if a is None
            else np.broadcast_to(a, (*a.shape[:-3], n_head, *a.shape[-2:]))[..., h, :, :]
        )

    heads = []
    for h in range(n_head):
        out, _ = attention_forward(
            q[..., h * dh : (h + 1) * dh],
            k[..., h * dh : (h + 1) * dh],
            v[..., h * dh_v : (h + 1) * dh_v],
            mask=head_slice(mask, h),
            bias=head_slice(bias, h),
            **kwargs,
        )
        heads.append(out)
    o_bias = weights.get("o_bias")
    return np.concatenate(heads, axis=-1) @ weights["o_weight"] + (
        0.0 if o_bias is None else o_bias
    )


@given(mha_problems())
def test_forward_matches_head_by_head_reference(problem):
    out, _ = multi_head_attention_forward(**problem)
    expected = naive_multi_head_attention(**problem)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def check_mha_gradients(problem: dict) -> dict:
    """gradcheck on x_q, x_kv, every weight and bias and the additive bias; returns the errors."""
    options = {key: problem[key] for key in ("n_head", "causal", "scale", "mask")}

    def forward(x_q, x_kv, bias=None, **weights):
        return multi_head_attention_forward(x_q, x_kv, weights, bias=bias, **options)

    def backward(dout, cache):
        dx_q, dx_kv, dweights = multi_head_attention_backward(dout, cache)
        return {"x_q": dx_q, "x_kv": dx_kv, **dweights}

    inputs = {"x_q": problem["x_q"], "x_kv": problem["x_kv"], **problem["weights"]}
    if problem["bias"] is not None:
        inputs["bias"] = problem["bias"]
    out, cache = forward(**inputs)
    dweights = multi_head_attention_backward(np.ones_like(out), cache)[2]
    assert set(dweights) == set(inputs) - {"x_q", "x_kv"}  # one gradient per weight, no more
    return gradcheck(forward, backward, inputs, rng=np.random.default_rng(1))


@given(mha_problems(max_t=3))
def test_backward_matches_finite_differences(problem):
    errors = check_mha_gradients(problem)
    assert max(errors.values()) < 1e-6, errors


@given(st.integers(1, 4), st.integers(1, 4), st.booleans(), st.integers(0, 2**32 - 1))
def test_self_attention_gradient_is_the_sum_of_both_input_gradients(t, n_head, causal, seed):
    rng = np.random.default_rng(seed)
    weights = make_weights(rng, 3, 3, 3, 2 * n_head, n_head, biases=("q", "v", "o"))

    def forward(x):
        return multi_head_attention_forward(x, x, weights, n_head, causal=causal)

    def backward(dout, cache):
        dx_q, dx_kv, _ = multi_head_attention_backward(dout, cache)
        return dx_q + dx_kv

    errors = gradcheck(forward, backward, {"x": rng.standard_normal((2, t, 3))}, rng=rng)
    assert errors["x"] < 1e-6, errors


@given(st.lists(st.integers(1, 3), max_size=2), st.integers(1, 5), st.integers(1, 5),
       st.booleans(), st.integers(0, 2**32 - 1))  # fmt: skip
def test_one_head_with_identity_projections_is_plain_attention(lead, tq, tk, causal, seed):
    rng = np.random.default_rng(seed)
    d = 4
    weights = {f"{p}_weight": np.eye(d) for p in PROJECTIONS}
    x_q, x_kv = rng.standard_normal((*lead, tq, d)), rng.standard_normal((*lead, tk, d))
    bias = rng.standard_normal((tq, tk))
    out, _ = multi_head_attention_forward(x_q, x_kv, weights, 1, causal=causal, bias=bias)
    expected, _ = attention_forward(x_q, x_kv, x_kv, causal=causal, bias=bias)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


@given(
    st.lists(st.integers(1, 2), max_size=2),
    st.integers(2, 7),
    st.data(),
    st.integers(1, 4),
    st.lists(st.sampled_from(PROJECTIONS), unique=True),
    st.integers(0, 2**32 - 1),
)
def test_kv_cache_matches_the_whole_sequence(lead, t, data, n_head, biases, seed):
    prefix = data.draw(st.integers(1, t - 1))
    rng = np.random.default_rng(seed)
    d = 5
    weights = make_weights(rng, d, d, d, 2 * n_head, 3 * n_head, biases)
    x = rng.standard_normal((*lead, t, d))
    full, _ = multi_head_attention_forward(x, x, weights, n_head, causal=True)

    x0 = x[..., :prefix, :]
    pieces = [multi_head_attention_forward(x0, x0, weights, n_head, causal=True)]
    for i in range(prefix, t):
        xi = x[..., i : i + 1, :]
        past = present_kv(pieces[-1][1])
        assert past[0].shape == (*lead, n_head, i, 2) and past[1].shape == (*lead, n_head, i, 3)
        pieces.append(
            multi_head_attention_forward(xi, xi, weights, n_head, causal=True, past_kv=past)
        )
    stepped = np.concatenate([out for out, _ in pieces], axis=-2)
    np.testing.assert_allclose(stepped, full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="past_kv"):
        multi_head_attention_backward(np.ones_like(pieces[-1][0]), pieces[-1][1])


@given(st.integers(1, 6), st.integers(0, 5), st.integers(0, 2**32 - 1))
def test_causal_self_attention_ignores_the_future(t, position, seed):
    position = min(position, t - 1)
    rng = np.random.default_rng(seed)
    weights = make_weights(rng, 4, 4, 4, 4, 4, biases=PROJECTIONS)
    x = rng.standard_normal((2, t, 4))
    out, cache = multi_head_attention_forward(x, x, weights, 2, causal=True)
    x2 = x.copy()
    x2[:, position + 1 :] = rng.standard_normal(x2[:, position + 1 :].shape)
    out2, _ = multi_head_attention_forward(x2, x2, weights, 2, causal=True)
    np.testing.assert_array_equal(out2[:, : position + 1], out[:, : position + 1])
    dout = rng.standard_normal(out.shape)
    dout[:, position + 1 :] = 0.0
    dx_q, dx_kv, _ = multi_head_attention_backward(dout, cache)
    assert not (dx_q + dx_kv)[:, position + 1 :].any()


def test_key_padding_mask_equals_a_broadcast_mask(rng):
    weights = make_weights(rng, 4, 4, 4, 6, 6, biases=("q", "k", "v", "o"))
    x = rng.standard_normal((3, 5, 4))
    padding = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=bool)
    out, _ = multi_head_attention_forward(x, x, weights, 3, key_padding_mask=padding)
    expected, _ = multi_head_attention_forward(x, x, weights, 3, mask=padding[:, None, None, :])
    np.testing.assert_array_equal(out, expected)
    # a batch of padding only attends to nothing: the attention output is 0, leaving the o bias
    np.testing.assert_allclose(out[2], np.broadcast_to(weights["o_bias"], (5, 4)), rtol=1e-15)
    combined, _ = multi_head_attention_forward(
        x, x, weights, 3, causal=True, key_padding_mask=padding
    )
    expected, _ = multi_head_attention_forward(
        x, x, weights, 3, causal=True, mask=padding[:, None, None, :]
    )
    np.testing.assert_array_equal(combined, expected)


def test_split_and_merge_heads_layout(rng):
    x = rng.standard_normal((2, 5, 12))
    heads = split_heads(x, 3)  # (2, 3, 5, 4)
    assert heads.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(heads[1, 2, 4], x[1, 4, 8:12])  # head h = features h*dh:(h+1)*dh
    np.testing.assert_array_equal(merge_heads(heads), x)
    with pytest.raises(ValueError, match="not divisible by n_head=5"):
        split_heads(x, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(rng, dtype):
    weights = make_weights(rng, 4, 3, 5, 6, 4, biases=PROJECTIONS, dtype=dtype)
    x_q = rng.standard_normal((2, 3, 4)).astype(dtype)
    x_kv = rng.standard_normal((2, 5, 3)).astype(dtype)
    bias = rng.standard_normal((2, 3, 5)).astype(dtype)
    out, cache = multi_head_attention_forward(x_q, x_kv, weights, 2, causal=True, bias=bias)
    assert out.dtype == dtype
    dx_q, dx_kv, dweights = multi_head_attention_backward(
        rng.standard_normal(out.shape).astype(dtype), cache
    )
    assert dx_q.dtype == dtype and dx_kv.dtype == dtype
    assert {name: g.dtype for name, g in dweights.items()} == {
        name: dtype for name in [*weights, "bias"]
    }


def test_float32_agrees_with_float64(rng):
    weights = make_weights(rng, 8, 8, 8, 8, 8, biases=PROJECTIONS)
    x = rng.standard_normal((2, 7, 8))
    out64, _ = multi_head_attention_forward(x, x, weights, 4, causal=True)
    w32 = {name: w.astype(np.float32) for name, w in weights.items()}
    out32, _ = multi_head_attention_forward(
        x.astype(np.float32), x.astype(np.float32), w32, 4, causal=True
    )
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)


def bad_case(rng, change: str):
    weights = make_weights(rng, 4, 4, 4, 6, 6, biases=PROJECTIONS)
    x_q, x_kv, n_head, extra = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), 3, {}
    if change == "inner not divisible":
        n_head = 4
    elif change == "x_q size":
        x_q = rng.standard_normal((2, 3, 5))
    elif change == "q/k inner":
        weights["k_weight"], weights["k_bias"] = rng.standard_normal((4, 3)), rng.standard_normal(3)
    elif change == "o input":
        weights["o_weight"] = rng.standard_normal((5, 4))
    elif change == "bias shape":
        weights["q_bias"] = rng.standard_normal(5)
    elif change == "missing":
        del weights["v_weight"]
    elif change == "n_head zero":
        n_head = 0
    elif change == "past shape":
        extra["past_kv"] = (np.zeros((2, 3, 4, 1)), np.zeros((2, 3, 4, 2)))
    elif change == "padding shape":
        extra["key_padding_mask"] = np.ones((2, 4), bool)
    return x_q, x_kv, weights, n_head, extra


@pytest.mark.parametrize(
    "change, message",
    [
        ("inner not divisible", "inner size 6 of q_weight/k_weight is not divisible by n_head=4"),
        ("x_q size", "q_weight .* expects input size 4 but x_q's last dimension is 5"),
        ("q/k inner", "same output"),
        ("o input", "o_weight .* v_weight's output size is 6"),
        ("bias shape", r"q_bias must have shape \(6,\)"),
        ("missing", "no 'v_weight'"),
        ("n_head zero", "positive integer"),
        ("past shape", r"k_past must have shape"),
        ("padding shape", "key_padding_mask"),
    ],
)
def test_bad_shapes_raise_value_error(rng, change, message):
    x_q, x_kv, weights, n_head, extra = bad_case(rng, change)
    with pytest.raises(ValueError, match=message):
        multi_head_attention_forward(x_q, x_kv, weights, n_head, **extra)


def test_mixed_dtypes_raise_type_error(rng):
    weights = make_weights(rng, 4, 4, 4, 4, 4, biases=(), dtype=np.float32)
    x = rng.standard_normal((3, 4))  # float64 input, float32 weights
    with pytest.raises(TypeError, match="x_q has float64"):
        multi_head_attention_forward(x, x, weights, 2)
