"""Rotary position embedding: the rotate-half formula, relative positions, the backward as the
rotation by -θ, finite differences, dtypes and errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.rope import rope_backward, rope_forward, rope_frequencies, rope_tables
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import batch_shapes, random_array, random_dout, seeds

head_dims = st.integers(1, 4).map(lambda n: 2 * n)
thetas = st.sampled_from([10000.0, 500000.0, 3.0])


def rope_reference(x: np.ndarray, offset: int, theta: float) -> np.ndarray:
    """Pair (x_i, x_{i + dh/2}) turned by (offset + t) θ_i, one 2x2 rotation at a time."""
    dh = x.shape[-1]
    half = dh // 2
    y = np.empty_like(x)
    for t in range(x.shape[-2]):
        for i in range(half):
            angle = (offset + t) * theta ** (-2 * i / dh)
            c, s = np.cos(angle), np.sin(angle)
            a, b = x[..., t, i], x[..., t, i + half]
            y[..., t, i] = c * a - s * b
            y[..., t, i + half] = s * a + c * b
    return y


@given(lead=batch_shapes(), t=st.integers(1, 5), dh=head_dims, offset=st.integers(0, 9),
       theta=thetas, seed=seeds())  # fmt: skip
def test_forward_rotates_each_pair_of_halves(lead, t, dh, offset, theta, seed):
    x = random_array((*lead, t, dh), seed)
    cos, sin = rope_tables(dh, t, offset, theta)
    y, _ = rope_forward(x, cos, sin)
    np.testing.assert_allclose(y, rope_reference(x, offset, theta), rtol=1e-12, atol=1e-12)
    # a rotation keeps each pair's length
    half = dh // 2
    np.testing.assert_allclose(
        y[..., :half] ** 2 + y[..., half:] ** 2, x[..., :half] ** 2 + x[..., half:] ** 2,
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip


@given(dh=head_dims, m=st.integers(0, 30), n=st.integers(0, 30), shift=st.integers(1, 50),
       theta=thetas, seed=seeds())  # fmt: skip
def test_score_depends_only_on_the_offset_between_positions(dh, m, n, shift, theta, seed):
    q, k = random_array((1, dh), seed), random_array((1, dh), seed + 3)

    def score(pq: int, pk: int) -> float:
        rq, _ = rope_forward(q, *rope_tables(dh, 1, pq, theta))
        rk, _ = rope_forward(k, *rope_tables(dh, 1, pk, theta))
        return float(rq[0] @ rk[0])

    assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-10, abs=1e-10)


@given(lead=batch_shapes(), t=st.integers(1, 4), dh=head_dims, offset=st.integers(0, 9),
       theta=thetas, seed=seeds())  # fmt: skip
def test_backward_matches_finite_differences(lead, t, dh, offset, theta, seed):
    x = random_array((*lead, t, dh), seed)
    cos, sin = rope_tables(dh, t, offset, theta)
    errors = gradcheck(rope_forward, rope_backward, {"x": x}, kwargs={"cos": cos, "sin": sin},
                       dout=random_dout(x.shape, seed))  # fmt: skip
    assert errors["x"] < 1e-7, errors


@given(t=st.integers(1, 4), dh=head_dims, offset=st.integers(0, 9), seed=seeds())
def test_backward_is_the_rotation_by_minus_theta_and_inverts_the_forward(t, dh, offset, seed):
    x = random_array((2, t, dh), seed)
    cos, sin = rope_tables(dh, t, offset)
    y, cache = rope_forward(x, cos, sin)
    np.testing.assert_allclose(rope_backward(y, cache), x, rtol=1e-12, atol=1e-12)
    back, _ = rope_forward(y, cos, -sin)  # the forward with the angles negated
    np.testing.assert_allclose(rope_backward(y, cache), back, rtol=0, atol=0)


def test_tables_follow_transformers_layout():
    cos, sin = rope_tables(6, 4, offset=2, theta=100.0)
    freqs = 1.0 / 100.0 ** (np.array([0, 2, 4]) / 6)
    angles = np.arange(2, 6)[:, None] * freqs  # (T, dh/2)
    np.testing.assert_allclose(cos, np.cos(np.concatenate([angles, angles], -1)), rtol=1e-15)
    np.testing.assert_allclose(sin, np.sin(np.concatenate([angles, angles], -1)), rtol=1e-15)
    np.testing.assert_allclose(rope_frequencies(6, 100.0), freqs, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_and_output_is_c_ordered(dtype):
    x = random_array((3, 2, 4), 0, dtype).transpose(1, 0, 2)  # a strided view (2, 3, 4)
    y, cache = rope_forward(x, *rope_tables(4, 3))
    assert y.dtype == dtype and y.flags.c_contiguous
    assert rope_backward(y, cache).dtype == dtype


def test_float32_agrees_with_float64():
    x = random_array((2, 5, 8), 1)
    y64, _ = rope_forward(x, *rope_tables(8, 5, 100))
    y32, _ = rope_forward(x.astype(np.float32), *rope_tables(8, 5, 100, dtype=np.float32))
    np.testing.assert_allclose(y32, y64, atol=1e-5)


@pytest.mark.parametrize(
    "shape, table, message",
    [((2, 3, 4), (2, 4), "x must be"), ((3, 5), (3, 5), "even"), ((3, 4), (3, 4), None)],
)
def test_bad_inputs_raise_clear_errors(shape, table, message):
    if message is None:  # integer x
        with pytest.raises(TypeError, match="floating"):
            rope_forward(np.zeros(shape, dtype=np.int64), *rope_tables(4, 3))
        return
    with pytest.raises(ValueError, match=message):
        rope_forward(np.zeros(shape), *rope_tables(table[1], table[0]))
