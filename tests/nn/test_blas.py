"""Limiting BLAS threads changes the speed of a pass, never its numbers."""

import numpy as np
import pytest

from numpyllm import GPT, GPTConfig
from numpyllm.nn.blas import blas_threads


def test_blas_thread_setting_leaves_logits_and_gradients_unchanged():
    config = GPTConfig(vocab_size=31, n_layer=2, n_head=2, d_model=16, max_seq_len=12, dropout=0)
    ids = np.random.default_rng(0).integers(0, 31, size=(3, 12))
    results = []
    for setting in (None, 1, "auto"):
        model = GPT(config, rng=np.random.default_rng(1)).astype(np.float64)
        model.blas_threads = setting
        out = model(ids, labels=ids)
        model.backward()
        results.append((out.logits, [p.grad.copy() for p in model.parameters()]))
    for logits, grads in results[1:]:
        np.testing.assert_allclose(logits, results[0][0], rtol=1e-12, atol=1e-12)
        for g, g0 in zip(grads, results[0][1]):
            np.testing.assert_allclose(g, g0, rtol=1e-10, atol=1e-12)


def test_blas_threads_context_limits_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [info["num_threads"] for info in threadpoolctl.threadpool_info()
              if info["user_api"] == "blas"]  # fmt: skip
    with blas_threads(1):
        inside = [info["num_threads"] for info in threadpoolctl.threadpool_info()
                  if info["user_api"] == "blas"]  # fmt: skip
        assert all(n == 1 for n in inside)
    after = [info["num_threads"] for info in threadpoolctl.threadpool_info()
             if info["user_api"] == "blas"]  # fmt: skip
    assert after == before
