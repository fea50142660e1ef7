"""Adam and AdamW against a per-parameter transcription of the papers' algorithms."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import Adam, AdamW


def reference_adam(thetas, grad_steps, group_of, hypers, decoupled):
    """Kingma & Ba Algorithm 1 (AdamW: Loshchilov & Hutter Algorithm 2), one parameter at a time.

    hypers[k] = (alpha, beta1, beta2, epsilon, lambda) for group k.
    """
    theta = [t.copy() for t in thetas]
    m = [np.zeros_like(t) for t in thetas]
    v = [np.zeros_like(t) for t in thetas]
    for t, grads in enumerate(grad_steps, start=1):
        for i, g in enumerate(grads):
            alpha, beta1, beta2, epsilon, lam = hypers[group_of[i]]
            if decoupled:
                theta[i] = theta[i] - alpha * lam * theta[i]
            else:
                g = g + lam * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1**t)
            v_hat = v[i] / (1 - beta2**t)
            theta[i] = theta[i] - alpha * m_hat / (np.sqrt(v_hat) + epsilon)
    return theta, m, v


hyper_strategy = st.tuples(
    st.floats(1e-4, 0.3),  # alpha
    st.floats(0.0, 0.99),  # beta1
    st.floats(0.5, 0.9999),  # beta2
    st.sampled_from([1e-8, 1e-6, 1e-3]),  # epsilon
    st.sampled_from([0.0, 1e-3, 0.1, 1.0]),  # lambda
)


@st.composite
def problems(draw):
    shapes = draw(
        st.lists(
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), min_size=1, max_size=4
        )
    )
    split = draw(st.integers(1, len(shapes)))  # parameters [0, split) in group 0, the rest in 1
    n_groups = 1 if split == len(shapes) else 2
    hypers = [draw(hyper_strategy) for _ in range(n_groups)]
    steps = draw(st.integers(1, 6))
    grad_scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return shapes, split, hypers, steps, grad_scale, seed


def run_case(opt_class, problem, dtype=np.float64):
    shapes, split, hypers, steps, grad_scale, seed = problem
    rng = np.random.default_rng(seed)
    thetas = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grad_steps = [
        [(grad_scale * rng.standard_normal(s)).astype(dtype) for s in shapes] for _ in range(steps)
    ]
    params = [Parameter(t.copy()) for t in thetas]
    groups = [{"params": params[:split]}, {"params": params[split:]}][: len(hypers)]
    for group, (alpha, beta1, beta2, epsilon, lam) in zip(groups, hypers):
        group.update(lr=alpha, betas=(beta1, beta2), eps=epsilon, weight_decay=lam)
    opt = opt_class(groups)
    for grads in grad_steps:
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad += g
        opt.step()
    group_of = [0 if i < split else 1 for i in range(len(shapes))]
    expected = reference_adam(thetas, grad_steps, group_of, hypers, opt_class is AdamW)
    return params, opt, expected


@pytest.mark.parametrize("opt_class", [Adam, AdamW])
@given(problem=problems())
def test_matches_the_papers_algorithm(opt_class, problem):
    params, opt, (theta, m, v) = run_case(opt_class, problem)
    state = opt.state_dict()["state"]
    for i, p in enumerate(params):
        np.testing.assert_allclose(p.data, theta[i], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(state[f"state.{i}.exp_avg"], m[i], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(state[f"state.{i}.exp_avg_sq"], v[i], rtol=1e-12, atol=1e-15)
    assert opt.step_count == problem[3]


def test_first_step_is_alpha_times_sign_over_one_plus_eps():
    # t = 1: m_hat = g and v_hat = g^2, so theta_1 = theta_0 - alpha * g / (|g| + epsilon)
    p = Parameter(np.array([1.0, -2.0, 3.0, 0.5]))
    p.grad[...] = [0.5, -4.0, 1e-9, 0.0]
    Adam([p], lr=0.1, eps=1e-8).step()
    g = np.array([0.5, -4.0, 1e-9, 0.0])
    np.testing.assert_allclose(
        p.data, np.array([1.0, -2.0, 3.0, 0.5]) - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-15
    )


def test_adamw_decay_is_decoupled_from_the_moments():
    # With zero gradients m = v = 0, so AdamW only shrinks: theta_t = theta_0 (1 - alpha lambda)^t.
    theta0 = np.array([[1.0, -3.0], [0.25, 8.0]])
    p = Parameter(theta0.copy())
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.step()
    expected = theta0 * (1 - 0.05) * (1 - 0.05) * (1 - 0.05)
    np.testing.assert_allclose(p.data, expected, rtol=1e-15)
    # Adam's L2 decay goes through the moments instead: each weight moves by about alpha per step.
    q = Parameter(theta0.copy())
    adam = Adam([q], lr=0.1, weight_decay=0.5)
    adam.step()
    np.testing.assert_allclose(q.data, theta0 - 0.1 * np.sign(theta0), rtol=1e-7)


def test_gradients_are_not_modified_by_a_step():
    p = Parameter(np.array([1.0, 2.0]))
    p.grad[...] = [0.3, -0.7]
    Adam([p], weight_decay=0.1).step()
    np.testing.assert_array_equal(p.grad, [0.3, -0.7])


def test_defaults():
    p = Parameter(np.zeros(2))
    assert Adam([p]).param_groups[0] == {
        "params": [p],
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
    }
    assert AdamW([Parameter(np.zeros(2))]).param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"betas": (1.0, 0.999)},
        {"betas": (0.9, -0.1)},
        {"betas": (0.9,)},
        {"eps": -1e-8},
        {"weight_decay": -0.1},
        {"lr": float("nan")},
    ],
)
def test_invalid_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        AdamW([Parameter(np.zeros(2))], **kwargs)


def test_invalid_group_override_raises():
    with pytest.raises(ValueError, match="lr"):
        Adam([{"params": [Parameter(np.zeros(2))], "lr": -0.5}])


@pytest.mark.parametrize("opt_class", [Adam, AdamW])
def test_float32_stays_float32(opt_class):
    problem = (
        [(3, 4), (4,)],
        1,
        [(1e-2, 0.9, 0.999, 1e-8, 0.1), (3e-2, 0.8, 0.99, 1e-8, 0.0)],
        5,
        1.0,
        7,
    )
    params, opt, (theta, _, _) = run_case(opt_class, problem, dtype=np.float32)
    for p, expected in zip(params, theta):
        # float32 arithmetic tracks the reference (run in float32 arrays, float64 scalars)
        np.testing.assert_allclose(p.data, expected, rtol=1e-5, atol=1e-6)
    opt.param_groups[0]["lr"] = np.float64(1e-2)  # a NumPy float64 scalar must not upcast either
    opt.step()
    for p in params:
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    for value in opt.state_dict()["state"].values():
        assert value.dtype == np.float32
