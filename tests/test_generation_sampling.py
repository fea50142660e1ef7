"""Logits processors and sampling: never outside their sets, deterministic with a seed."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from numpyllm.generation import (
    next_token,
    sample_from_logits,
    top_k_filter,
    top_p_filter,
)

logit_rows = st.integers(1, 3).flatmap(
    lambda b: st.integers(2, 12).flatmap(
        # distinct logits at least 0.1 apart, so "the k most likely" has no ties
        lambda v: arrays(
            np.float64, (b, v), elements=st.integers(-200, 200).map(lambda i: i / 10), unique=True
        )
    )
)


@given(logits=logit_rows, k=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_top_k_samples_only_the_k_largest(logits, k, seed):
    filtered = top_k_filter(logits, k)
    k = min(k, logits.shape[1])
    allowed = np.argsort(-logits, axis=1)[:, :k]
    assert (np.isfinite(filtered).sum(axis=1) == k).all()
    for _ in range(5):
        token = next_token(logits, True, 1.0, k, None, np.random.default_rng(seed))
        assert all(token[i] in allowed[i] for i in range(len(token)))
        seed += 1


@given(logits=logit_rows, p=st.floats(0.01, 1.0), seed=st.integers(0, 2**32 - 1))
def test_top_p_keeps_the_smallest_nucleus(logits, p, seed):
    filtered = top_p_filter(logits, p)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row in range(logits.shape[0]):
        kept = np.isfinite(filtered[row])
        order = np.argsort(-probs[row])
        n_kept = kept.sum()
        assert n_kept >= 1
        # the kept set is the n most likely tokens...
        assert set(np.flatnonzero(kept)) == set(order[:n_kept])
        # ...its mass reaches p, and without its least likely member it would not
        mass = np.sort(probs[row])[::-1].cumsum()
        assert mass[n_kept - 1] >= p - 1e-12
        if n_kept > 1:
            assert mass[n_kept - 2] < p
    token = next_token(logits, True, 0.7, None, p, np.random.default_rng(seed))
    assert all(np.isfinite(filtered[i, token[i]]) for i in range(len(token)))


def test_sampling_is_deterministic_with_a_seed_and_follows_probabilities():
    logits = np.log(np.array([[0.1, 0.2, 0.7]]))
    a = [sample_from_logits(logits, np.random.default_rng(5))[0] for _ in range(3)]
    b = [sample_from_logits(logits, np.random.default_rng(5))[0] for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(0)
    draws = np.array([sample_from_logits(logits, rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.03)


def test_greedy_is_argmax_and_bad_settings_fail():
    logits = np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    np.testing.assert_array_equal(next_token(logits, False, 1.0, None, None, None), [1, 0])
    with pytest.raises(ValueError, match="temperature"):
        next_token(logits, True, 0.0, None, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 1.5)
