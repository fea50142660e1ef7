"""SGD against a per-parameter transcription of its update rule."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import SGD


def reference_sgd(thetas, grad_steps, group_of, hypers):
    """theta <- theta - alpha * g with L2 decay, momentum (b_1 = g_1) and Nesterov look-ahead.

    hypers[k] = (alpha, mu, nesterov, lambda) for group k.
    """
    theta = [t.copy() for t in thetas]
    buffers = [None] * len(thetas)
    for grads in grad_steps:
        for i, g in enumerate(grads):
            alpha, mu, nesterov, lam = hypers[group_of[i]]
            g = g + lam * theta[i]
            if mu != 0:
                buffers[i] = g.copy() if buffers[i] is None else mu * buffers[i] + g
                g = g + mu * buffers[i] if nesterov else buffers[i]
            theta[i] = theta[i] - alpha * g
    return theta, buffers


@st.composite
def hyper_strategy(draw):
    mu = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    nesterov = draw(st.booleans()) if mu > 0 else False
    return (draw(st.floats(1e-4, 1.0)), mu, nesterov, draw(st.sampled_from([0.0, 1e-3, 0.1])))


@st.composite
def problems(draw):
    shapes = draw(
        st.lists(
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), min_size=1, max_size=4
        )
    )
    split = draw(st.integers(1, len(shapes)))
    n_groups = 1 if split == len(shapes) else 2
    hypers = [draw(hyper_strategy()) for _ in range(n_groups)]
    return shapes, split, hypers, draw(st.integers(1, 6)), draw(st.integers(0, 2**32 - 1))


@given(problem=problems())
def test_matches_the_update_rule(problem):
    shapes, split, hypers, steps, seed = problem
    rng = np.random.default_rng(seed)
    thetas = [rng.standard_normal(s) for s in shapes]
    grad_steps = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    params = [Parameter(t.copy()) for t in thetas]
    groups = [{"params": params[:split]}, {"params": params[split:]}][: len(hypers)]
    for group, (alpha, mu, nesterov, lam) in zip(groups, hypers):
        group.update(lr=alpha, momentum=mu, nesterov=nesterov, weight_decay=lam)
    opt = SGD(groups, lr=123.0)  # every group overrides lr
    for grads in grad_steps:
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad += g
        opt.step()

    group_of = [0 if i < split else 1 for i in range(len(shapes))]
    theta, buffers = reference_sgd(thetas, grad_steps, group_of, hypers)
    state = opt.state_dict()["state"]
    for i, p in enumerate(params):
        np.testing.assert_allclose(p.data, theta[i], rtol=1e-12, atol=1e-12)
        if buffers[i] is None:
            assert f"state.{i}.momentum_buffer" not in state
        else:
            np.testing.assert_allclose(
                state[f"state.{i}.momentum_buffer"], buffers[i], rtol=1e-12, atol=1e-12
            )


def test_plain_step_by_hand():
    p = Parameter(np.array([1.0, -2.0]))
    p.grad[...] = [0.5, 4.0]
    SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [0.95, -2.4], rtol=1e-15)


def test_momentum_by_hand():
    # b_1 = g = 1, theta = -0.1; b_2 = 0.9 * 1 + 1 = 1.9, theta = -0.1 - 0.19 = -0.29
    p = Parameter(np.array([0.0]))
    p.grad[...] = 1.0
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    np.testing.assert_allclose(p.data, [-0.1], rtol=1e-15)
    opt.step()
    np.testing.assert_allclose(p.data, [-0.29], rtol=1e-15)
    # nesterov: step 1 uses g + mu b_1 = 1.9
    q = Parameter(np.array([0.0]))
    q.grad[...] = 1.0
    SGD([q], lr=0.1, momentum=0.9, nesterov=True).step()
    np.testing.assert_allclose(q.data, [-0.19], rtol=1e-15)


def test_gradients_are_not_modified_by_a_step():
    p = Parameter(np.array([1.0, 2.0]))
    p.grad[...] = [0.3, -0.7]
    SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1).step()
    np.testing.assert_array_equal(p.grad, [0.3, -0.7])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -0.1},
        {"lr": 0.1, "momentum": -0.5},
        {"lr": 0.1, "weight_decay": -1.0},
        {"lr": 0.1, "nesterov": True},
    ],
)
def test_invalid_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        SGD([Parameter(np.zeros(2))], **kwargs)


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    p = Parameter(rng.standard_normal((4, 3)).astype(np.float32))
    opt = SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for _ in range(3):
        p.grad[...] = rng.standard_normal((4, 3))
        opt.step()
    assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    assert opt.state_dict()["state"]["state.0.momentum_buffer"].dtype == np.float32
