"""Global-norm gradient clipping: the norm returned, the scaling, the no-op below the limit."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import SGD, clip_grad_norm


def with_grads(*grads):
    params = []
    for g in grads:
        p = Parameter(np.zeros(np.shape(g)))
        p.grad[...] = g
        params.append(p)
    return params


def test_norm_and_scaling_by_hand():
    a, b = with_grads([3.0, 0.0], [[0.0], [4.0]])  # global norm sqrt(9 + 16) = 5
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert norm == 5.0 and type(norm) is float
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_array_equal(a.grad, [3.0 * coef, 0.0])
    np.testing.assert_array_equal(b.grad, [[0.0], [4.0 * coef]])


def test_no_op_below_the_limit():
    a, b = with_grads([3.0, 0.0], [4.0])
    assert clip_grad_norm([a, b], max_norm=10.0) == 5.0
    np.testing.assert_array_equal(a.grad, [3.0, 0.0])
    np.testing.assert_array_equal(b.grad, [4.0])
    # at exactly max_norm the factor max_norm / (norm + 1e-6) is just under 1 (torch's rule)
    clip_grad_norm([a, b], max_norm=5.0)
    np.testing.assert_array_equal(b.grad, [4.0 * 5.0 / (5.0 + 1e-6)])


def test_each_parameter_counts_once():
    (a,) = with_grads([3.0, 4.0])
    assert clip_grad_norm([a, a, a], max_norm=100.0) == 5.0


@given(
    shapes=st.lists(
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5), min_size=1, max_size=5
    ),
    max_norm=st.floats(1e-3, 10.0),
    scale=st.sampled_from([1e-3, 1.0, 100.0]),
    in_optimizer=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_global_norm_matches_the_concatenated_vector(shapes, max_norm, scale, in_optimizer, seed):
    rng = np.random.default_rng(seed)
    grads = [scale * rng.standard_normal(s) for s in shapes]
    params = with_grads(*grads)
    if in_optimizer:
        SGD(params, lr=0.1)  # the grads become views of one flat buffer: the fast path
    expected_norm = float(np.sqrt(sum(np.sum(g * g) for g in grads)))
    norm = clip_grad_norm(params, max_norm)
    np.testing.assert_allclose(norm, expected_norm, rtol=1e-12)
    coef = min(1.0, max_norm / (expected_norm + 1e-6))
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad, g * coef, rtol=1e-12, atol=1e-300)
    if coef < 1.0:  # the clipped gradients have norm max_norm (up to the 1e-6)
        clipped = float(np.sqrt(sum(np.sum(p.grad * p.grad) for p in params)))
        np.testing.assert_allclose(
            clipped, max_norm * expected_norm / (expected_norm + 1e-6), rtol=1e-12
        )


def test_a_subset_of_an_optimizers_parameters_clips_only_that_subset():
    a, b, c = with_grads([3.0, 4.0], [100.0], [0.0, 0.0, 0.0])
    SGD([a, b, c], lr=0.1)  # all three grads now share one flat buffer
    assert clip_grad_norm([a, c], max_norm=1.0) == 5.0
    np.testing.assert_array_equal(b.grad, [100.0])  # not listed, not scaled, not counted
    np.testing.assert_allclose(a.grad, np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-15)


def test_float32_stays_float32():
    (a,) = with_grads([3.0, 4.0])
    a.data = a.data.astype(np.float32)
    a.grad = a.grad.astype(np.float32)
    assert clip_grad_norm([a], max_norm=1.0) == pytest.approx(5.0)
    assert a.grad.dtype == np.float32
    np.testing.assert_allclose(a.grad, [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
def test_non_positive_max_norm_raises(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(with_grads([1.0]), max_norm)


def test_non_parameters_raise():
    with pytest.raises(TypeError, match="Parameters"):
        clip_grad_norm([np.zeros(3)], 1.0)


def test_overlapping_views_do_not_count_as_the_whole_buffer():
    a, b = with_grads([3.0, 4.0], [100.0, 100.0])
    SGD([a, b], lr=0.1)
    c = Parameter(np.zeros(2))
    c.grad = a.grad  # same memory as a's gradient: sizes add up to the buffer, but b is not in it
    clip_grad_norm([a, c], max_norm=1.0)
    np.testing.assert_array_equal(b.grad, [100.0, 100.0])
