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


def test_bert_and_t5_blas_settings_leave_the_numbers_unchanged():
    from numpyllm import BERT, T5, BertConfig, T5Config

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 29, size=(2, 7))
    makers = (
        lambda: BERT(BertConfig(vocab_size=29, n_layer=1, n_head=2, d_model=8, max_seq_len=8,
                                dropout=0.0), rng=np.random.default_rng(1)),
        lambda: T5(T5Config(vocab_size=29, d_model=8, d_kv=4, d_ff=12, n_layer=1, n_head=2,
                            dropout=0.0), rng=np.random.default_rng(1)),
    )  # fmt: skip
    for make in makers:
        results = []
        for setting in (None, 1, "auto"):
            model = make().astype(np.float64)
            model.blas_threads = setting
            out = model(ids, labels=ids)
            model.backward()
            results.append((out.loss, [p.grad.copy() for p in model.parameters()]))
        for loss, grads in results[1:]:
            assert abs(loss - results[0][0]) < 1e-12
            for g, g0 in zip(grads, results[0][1]):
                np.testing.assert_allclose(g, g0, rtol=1e-10, atol=1e-12)


def test_threads_for_pass_policy():
    from numpyllm.nn.blas import SMALL_PASS, threads_for_pass

    assert threads_for_pass("auto", 10, 8) == 1
    assert threads_for_pass("auto", SMALL_PASS, 1) is None
    assert threads_for_pass("auto", None, 8) is None
    assert threads_for_pass(2, 10, 8) == 2
    assert threads_for_pass(None, 10, 8) is None
