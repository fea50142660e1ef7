"""Blocked attention (online softmax over query and key blocks) against the one-block path:
the same outputs and gradients to float64 rounding for any block size, shape, mask and bias,
and temporaries that grow with T, not T^2."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.attention import (
    attention_backward,
    attention_forward,
    attention_inference,
)
from tests.functional.test_attention import attention_problems

pytestmark = pytest.mark.filterwarnings("error")

WHOLE = 10**6  # a block size no test problem exceeds: the one-block path


def _forward_backward(problem: dict, block_size: int, dout: np.ndarray | None, with_out: bool):
    out, cache = attention_forward(**problem, block_size=block_size)
    if dout is None:
        return out, None
    grads = attention_backward(dout, cache, out=out if with_out else None)
    return out, grads


@given(attention_problems(max_t=9), st.integers(1, 4), st.booleans(), st.integers(0, 2**32 - 1))
def test_blocked_equals_one_block(problem, block_size, with_out, seed):
    out, _ = _forward_backward(problem, WHOLE, None, False)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    out_whole, grads_whole = _forward_backward(problem, WHOLE, dout, with_out)
    out_blocked, grads_blocked = _forward_backward(problem, block_size, dout, with_out)
    assert out_blocked.shape == out_whole.shape
    np.testing.assert_allclose(out_blocked, out_whole, rtol=1e-12, atol=1e-12)
    for name, whole, blocked in zip(("dq", "dk", "dv", "dbias"), grads_whole, grads_blocked):
        if whole is None:
            assert blocked is None, name
            continue
        assert blocked.shape == whole.shape, name
        np.testing.assert_allclose(blocked, whole, rtol=1e-10, atol=1e-11, err_msg=name)


def test_blocked_t5_style_bias_and_padding_float32(rng):
    """T5's shapes: a (1, H, T, T) position bias, a (B, 1, 1, T) key padding mask with a
    fully padded row, no scaling; float32 stays float32 and agrees with the one-block path."""
    B, H, T, d = 2, 3, 37, 8
    q, k, v = (rng.standard_normal((B, H, T, d)).astype(np.float32) for _ in range(3))
    bias = rng.standard_normal((1, H, T, T)).astype(np.float32)
    mask = np.ones((B, 1, 1, T), dtype=bool)
    mask[1, ..., 20:] = False
    mask[0] = False  # nothing to attend to: zeros, as in the one-block path
    kwargs = dict(mask=mask, bias=bias, scale=1.0)
    dout = rng.standard_normal((B, H, T, d)).astype(np.float32)
    ref_out, ref_cache = attention_forward(q, k, v, **kwargs, block_size=WHOLE)
    out, cache = attention_forward(q, k, v, **kwargs, block_size=8)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    assert not out[0].any()
    for ref, got in zip(attention_backward(dout, ref_cache), attention_backward(dout, cache)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_inference_blocks_long_prompts(rng, monkeypatch, causal, threads):
    from numpyllm.nn import blas, parallel

    monkeypatch.setattr(blas, "current_threads", lambda: threads)  # 2: heads on two parts
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    q = rng.standard_normal((2, 19, 4))
    k, v = rng.standard_normal((2, 23, 4)), rng.standard_normal((2, 23, 3))
    whole = attention_inference(q, k, v, causal=causal, block_size=WHOLE)
    np.testing.assert_allclose(attention_inference(q, k, v, causal=causal, block_size=5), whole)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_block_size_is_refused(rng, bad, error):
    q = rng.standard_normal((3, 2))
    with pytest.raises(error, match="block_size"):
        attention_forward(q, q, q, block_size=bad)


def _peak_bytes(t: int, block: int) -> int:
    """Peak NumPy allocation (tracemalloc sees NumPy's buffers) of a causal forward and
    backward with one head, beyond its inputs."""
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, t, 16)).astype(np.float32) for _ in range(4))
    tracemalloc.start()
    try:
        out, cache = attention_forward(q, k, v, causal=True, block_size=block)
        attention_backward(dout, cache, out=out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_blocked_temporaries_grow_linearly_with_the_sequence():
    """Doubling T twice multiplies the peak by about 4 (O(T)), never by 16 (O(T^2)); one block
    holds at most a few 64 x 64 score blocks, far below one (T x T) array."""
    peaks = [_peak_bytes(t, 64) for t in (512, 1024, 2048)]
    assert peaks[2] < 5 * peaks[0], peaks
    assert peaks[2] < 2048 * 2048 * 4 / 8, peaks  # an eighth of a single (T x T) float32 array
    assert _peak_bytes(2048, 10**4) > 2048 * 2048 * 4  # the one-block path: the whole (T x T)


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 40), (40, 40)])
def test_heads_split_over_cores_give_the_unsplit_result(rng, monkeypatch, mask_shape):
    """Blocked attention runs its heads (or rows) on parts, one per BLAS thread: the same
    outputs and gradients as one part, the parts covering every head exactly once."""
    from numpyllm.nn import blas, parallel

    shape = (2, 3, 40, 8)  # (B, H, T, d): 40 x 40 scores in blocks of 16
    q, k, v, dout = (rng.standard_normal(shape) for _ in range(4))
    mask = None if mask_shape is None else rng.random(mask_shape) > 0.3
    problem = {"q": q, "k": k, "v": v, "causal": True, "mask": mask, "block_size": 16}

    def run(threads: int) -> tuple:
        monkeypatch.setattr(blas, "current_threads", lambda: threads)
        out, cache = attention_forward(**problem)
        return (out, *attention_backward(dout, cache, out=out)[:3])

    monkeypatch.setattr(parallel, "available_cores", lambda: 8)
    calls: list[int] = []
    real_run_parts = parallel.run_parts
    monkeypatch.setattr(parallel, "run_parts", lambda tasks: calls.append(len(tasks)) or
                        real_run_parts(tasks))  # fmt: skip
    whole = run(1)
    assert calls == []
    split = run(3)
    assert calls == [3, 3]  # forward and backward: three heads on three parts (mask: over H)
    for name, a, b in zip(("out", "dq", "dk", "dv"), whole, split):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13, err_msg=name)
