"""SimpleNN: the maths, gradients, training with SGD to >= 95% held-out accuracy, the example,
the data generator, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.gradcheck import gradcheck_model
from numpyllm.models.simple_nn import SimpleNN, make_two_moons
from numpyllm.optim import SGD

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "simple_nn.py"


def load_example():
    spec = importlib.util.spec_from_file_location("simple_nn_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def away_from_relu_kinks(model: SimpleNN, x: np.ndarray, margin: float = 0.02) -> np.ndarray:
    """The rows whose hidden pre-activations are all at least ``margin`` from 0: there a
    finite difference never steps across ReLU's kink."""
    z = x @ model.hidden.weight.data + model.hidden.bias.data
    return np.abs(z).min(axis=1) > margin


def train(model: SimpleNN, x, y, steps: int, lr: float) -> list[float]:
    optimizer = SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = model(x, labels=y)
        optimizer.zero_grad()
        model.backward()
        optimizer.step()
        losses.append(out.loss)
    return losses


# ---- structure and maths -------------------------------------------------------------------
def test_article_layout():
    model = SimpleNN()
    names = {name: p.shape for name, p in model.named_parameters()}
    assert names == {
        "hidden.weight": (2, 3),
        "hidden.bias": (3,),
        "output.weight": (3, 1),
        "output.bias": (1,),
    }
    assert repr(model) == (
        "SimpleNN(\n"
        "  (hidden): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (output): Linear(in_features=3, out_features=1, bias=True)\n"
        ")"
    )
    assert SimpleNN(in_features=5, hidden=7).hidden.weight.shape == (5, 7)


def test_initialisation_is_torch_linears_uniform():
    model = SimpleNN(in_features=4, hidden=2000, rng=np.random.default_rng(0))
    w = model.hidden.weight.data
    assert np.abs(w).max() <= 0.5 and np.abs(w).max() > 0.49  # U(-1/sqrt(4), 1/sqrt(4))
    assert np.abs(model.hidden.bias.data).max() <= 0.5
    assert np.abs(model.output.weight.data).max() <= 1 / np.sqrt(2000)


@given(st.integers(0, 2**16), st.integers(1, 20), st.integers(1, 6), st.integers(1, 4))
def test_forward_matches_the_formula(seed, n, hidden, in_features):
    rng = np.random.default_rng(seed)
    model = SimpleNN(in_features, hidden, rng=rng).astype(np.float64)
    x = rng.standard_normal((n, in_features))
    y = rng.integers(0, 2, n)
    w1, b1 = model.hidden.weight.data, model.hidden.bias.data
    w2, b2 = model.output.weight.data, model.output.bias.data
    s = np.maximum(x @ w1 + b1, 0) @ w2 + b2  # (n, 1)
    p = 1 / (1 + np.exp(-s))
    out = model(x, labels=y)
    np.testing.assert_allclose(out.logits, s, rtol=1e-12, atol=1e-14)
    expected = -np.mean(y[:, None] * np.log(p) + (1 - y[:, None]) * np.log(1 - p))
    assert out.loss == pytest.approx(float(expected), rel=1e-10)
    np.testing.assert_allclose(model.predict_proba(x), p, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(x), (s[:, 0] > 0).astype(int))


def test_loss_is_finite_for_huge_logits():
    model = SimpleNN().astype(np.float64)
    model.output.weight.data[...] = 1e4
    x = np.array([[5.0, 5.0], [4.0, 3.0]])
    out = model(x, labels=np.array([0, 0]))  # confidently wrong: loss ~ logit, not inf
    assert np.isfinite(out.loss) and out.loss > 1e3
    model.backward()
    assert all(np.all(np.isfinite(p.grad)) for p in model.parameters())


# ---- gradients ------------------------------------------------------------------------------
@given(st.integers(0, 2**16), st.integers(2, 16), st.integers(1, 6))
def test_gradcheck(seed, n, hidden):
    rng = np.random.default_rng(seed)
    model = SimpleNN(3, hidden, rng=rng).astype(np.float64)
    x = rng.standard_normal((n, 3)) * 2
    y = rng.integers(0, 2, n)
    keep = away_from_relu_kinks(model, x)
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return
    errors = gradcheck_model(model, lambda: model(x, labels=y).loss, rng=rng, h=1e-4)
    assert set(errors) == {"hidden.weight", "hidden.bias", "output.weight", "output.bias"}
    assert max(errors.values()) < 1e-6, errors


def test_backward_from_dlogits_and_accumulation():
    rng = np.random.default_rng(1)
    model = SimpleNN(rng=rng).astype(np.float64)
    x = rng.standard_normal((8, 2))
    g = rng.standard_normal((8, 1))
    model.zero_grad()
    model(x)
    model.backward(dlogits=g)
    first = [p.grad.copy() for p in model.parameters()]
    # by hand: the chain rule written out
    z = x @ model.hidden.weight.data + model.hidden.bias.data
    a = np.maximum(z, 0)
    dz = (g @ model.output.weight.data.T) * (z > 0)
    expected = [x.T @ dz, dz.sum(0), a.T @ g, g.sum(0)]
    for got, want in zip(first, expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    model(x)
    model.backward(dlogits=g)
    for p, once in zip(model.parameters(), first):
        np.testing.assert_allclose(p.grad, 2 * once, rtol=1e-12)


def test_float32_stays_float32():
    model = SimpleNN()
    x, y = make_two_moons(20, 0.1, np.random.default_rng(0))
    out = model(x.astype(np.float64), labels=y)  # float64 input is computed in float32
    assert out.logits.dtype == np.float32 and isinstance(out.loss, float)
    model.backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    assert model.predict_proba(x).dtype == np.float32


# ---- training --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_article_network_reaches_95_percent_held_out(seed):
    rng = np.random.default_rng(seed)
    x, y = make_two_moons(400, 0.1, rng, gap=0.3)
    x_test, y_test = make_two_moons(400, 0.1, rng, gap=0.3)
    model = SimpleNN(rng=rng)
    losses = train(model, x, y, steps=1000, lr=0.5)
    assert losses[-1] < 0.5 * losses[0]
    assert np.mean(model.predict(x_test) == y_test) >= 0.95


def test_wider_network_solves_the_classic_interleaved_moons():
    """No straight line gets 95% here; 32 ReLU units do."""
    rng = np.random.default_rng(0)
    x, y = make_two_moons(400, 0.1, rng)
    x_test, y_test = make_two_moons(400, 0.1, rng)
    model = SimpleNN(hidden=32, rng=rng)
    train(model, x, y, steps=3000, lr=0.5)
    assert np.mean(model.predict(x_test) == y_test) >= 0.97
    # the best a linear classifier can do on these points, by least squares on +-1 targets
    features = np.hstack([x_test, np.ones((len(x_test), 1))])
    w = np.linalg.lstsq(features, 2.0 * y_test - 1.0, rcond=None)[0]
    assert np.mean((features @ w > 0) == y_test) < 0.95


def test_example_main_trains_and_prints(capsys):
    example = load_example()
    accuracy = example.main(["--steps", "1000", "--seed", "0"])
    printed = capsys.readouterr().out
    assert accuracy >= 0.95
    assert "(hidden): Linear(in_features=2, out_features=3, bias=True)" in printed
    assert "loss" in printed
    assert f"held-out accuracy {accuracy:.3f}" in printed


# ---- data ------------------------------------------------------------------------------------
@given(st.integers(2, 300), st.floats(0.0, 0.5), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_make_two_moons(n, noise, gap, seed):
    x, y = make_two_moons(n, noise, np.random.default_rng(seed), gap=gap)
    assert x.shape == (n, 2) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.sum() == n - n // 2  # balanced classes
    x2, y2 = make_two_moons(n, noise, np.random.default_rng(seed), gap=gap)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    if noise == 0.0:
        upper = x[y == 0].astype(np.float64)
        radius = np.hypot(upper[:, 0], upper[:, 1] - gap)
        np.testing.assert_allclose(radius, 1.0, rtol=1e-5)
        assert np.all(upper[:, 1] >= gap - 1e-6)


# ---- errors ----------------------------------------------------------------------------------
def test_errors():
    model = SimpleNN()
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        model(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        model(np.zeros((4, 2)), labels=np.zeros(3))
    with pytest.raises(ValueError, match="0 or 1"):
        model(np.zeros((2, 2)), labels=np.array([0, 2]))
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        model.backward()
    model(np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="needs a loss"):
        model.backward()
    with pytest.raises(ValueError, match="hidden"):
        SimpleNN(hidden=0)
    with pytest.raises(ValueError, match="n must be"):
        make_two_moons(1, 0.1, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        make_two_moons(10, 0.1, 0)
