"""The key bias of softmax attention: inert in the forward, exactly zero gradient, and what
Adam makes of the rounding noise that stands in for that zero (docs/attention.md)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.attention import attention_backward, attention_forward
from numpyllm.nn import MultiHeadAttention, Parameter
from numpyllm.optim import Adam


def key_gradient(dtype, seed: int, batch: int, heads: int, tq: int, tk: int, d: int,
                 causal: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """dK of one attention call, and its sum over the keys (what b_k receives)."""
    rng = np.random.default_rng(seed)
    q, k, v, dout = (
        rng.standard_normal(shape).astype(dtype)
        for shape in ((batch, heads, tq, d), (batch, heads, tk, d), (batch, heads, tk, d),
                      (batch, heads, tq, d))
    )  # fmt: skip
    _, cache = attention_forward(q, k, v, causal=causal)
    _, dk, _, _ = attention_backward(dout, cache)  # (B, H, Tk, d)
    return dk, dk.sum(axis=(0, 2))  # b_k is shared by every key of every row: (H, d)


@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    tq=st.integers(1, 6),
    tk=st.integers(1, 6),
    d=st.integers(1, 4),
    causal=st.booleans(),
)
def test_key_bias_gradient_is_zero_up_to_float64_rounding(seed, batch, heads, tq, tk, d, causal):
    """sum_j dK_j = scale * sum_i Q_i sum_j dS_ij, and every row of dS sums to 0."""
    dk, db_k = key_gradient(np.float64, seed, batch, heads, tq, tk, d, causal)
    terms = np.abs(dk).sum(axis=(0, 2))  # the size of what was added up
    assert np.all(np.abs(db_k) <= 1e-13 * terms + 1e-300)


def test_key_bias_gradient_is_rounding_noise_in_float32():
    """The same sum: ~1e-17 of its terms in float64, ~1e-8 in float32 (not zero)."""
    shape = dict(seed=0, batch=4, heads=2, tq=16, tk=16, d=8, causal=False)
    relative = {}
    for dtype in (np.float64, np.float32):
        dk, db_k = key_gradient(dtype, **shape)
        relative[dtype] = float(np.abs(db_k.astype(np.float64)).max()
                                / np.abs(dk.astype(np.float64)).sum(axis=(0, 2)).max())  # fmt: skip
    assert relative[np.float64] < 1e-15
    assert 1e-11 < relative[np.float32] < 1e-6  # eps32 = 1.2e-7: noise, and only noise


def test_key_bias_does_not_change_the_output():
    """Adding a vector c to b_k adds q_i . c to every score of row i: softmax ignores it."""
    rng = np.random.default_rng(1)
    layer = MultiHeadAttention(8, 2, rng=rng, std=0.5).astype(np.float64)
    x = rng.standard_normal((2, 5, 8))
    mask = np.ones((2, 1, 1, 5), dtype=bool)
    mask[1, ..., 3:] = False  # padding: the constant is still the same over the allowed keys
    before = layer(x, mask=mask)
    layer.k_proj.bias.data += 10 * rng.standard_normal(8)
    np.testing.assert_allclose(layer(x, mask=mask), before, rtol=0, atol=1e-13)
    layer.q_proj.bias.data += 0.1 * rng.standard_normal(8)  # the query bias is not inert
    assert np.abs(layer(x, mask=mask) - before).max() > 1e-3


@pytest.mark.parametrize("noise", [1e-2, 1e-5])
def test_adam_steps_on_pure_noise_do_not_shrink_with_the_noise(noise):
    """m_hat / sqrt(v_hat) is scale-free: noise far above eps moves a parameter as far as a
    real gradient would; eps stops it only once the noise falls below eps."""
    rng = np.random.default_rng(2)
    lr, steps = 1e-3, 200

    def walk(scale: float, eps: float) -> float:
        p = Parameter(np.zeros(64))
        optimizer = Adam([p], lr=lr, eps=eps)
        for _ in range(steps):
            p.grad[...] = scale * rng.standard_normal(64)  # a gradient made only of noise
            optimizer.step()
        return float(np.sqrt(np.mean(p.data**2)))  # how far the parameter wandered

    far = walk(noise, eps=1e-8)
    assert far > 0.2 * lr * np.sqrt(steps)  # a random walk of steps a sizeable part of lr
    assert walk(1.0, eps=1e-8) == pytest.approx(far, rel=0.5)  # ... whatever the noise scale
    assert walk(1e-12, eps=1e-8) < 1e-3 * far  # below eps, the steps shrink by noise / eps
