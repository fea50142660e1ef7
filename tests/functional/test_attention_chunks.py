"""Causal attention's one-block path in chunks of query rows (``causal_chunks``): the chunks
tile the rows, each sees every key its rows may attend to and none that all of them may
not, and chunked attention equals one chunk to float64 rounding, forward and backward."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional import attention as attention_module
from numpyllm.functional.attention import (
    attention_backward,
    attention_forward,
    attention_inference,
    causal_chunks,
)
from tests.functional.test_attention import attention_problems

pytestmark = pytest.mark.filterwarnings("error")


def _chunking(chunks: int, rows: int):
    """Patches the chunk count and the least rows per chunk."""
    return mock.patch.multiple(attention_module, _CHUNKS=chunks, _CHUNK_ROWS=rows)


@given(st.integers(1, 600), st.integers(0, 600), st.booleans())
def test_chunks_tile_the_rows_and_hold_exactly_the_keys_their_rows_may_see(tq, tk, causal):
    chunks = causal_chunks(tq, tk, causal)
    assert chunks[0][0].start == 0 and chunks[-1][0].stop == tq
    for (rows, _), (after, _) in zip(chunks, chunks[1:]):
        assert rows.stop == after.start  # in order, no gap, no overlap
    if not causal:
        assert chunks == [(slice(0, tq), slice(0, tk))]
        return
    assert len(chunks) <= attention_module._CHUNKS
    assert all(r.stop - r.start >= attention_module._CHUNK_ROWS for r, _ in chunks[1:])
    for rows, keys in chunks:
        assert keys.start == 0
        last_seen = rows.stop - 1 + tk - tq  # the chunk's last row sees keys j <= this
        assert keys.stop == min(tk, max(0, last_seen + 1))


def test_a_long_causal_problem_computes_five_eighths_of_its_scores():
    """T = 256: four chunks, (1 + 2 + 3 + 4) / 16 of the 256 x 256 scores, forward and
    backward alike."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 256, 8)) for _ in range(3))
    computed = []
    masked_scores = attention_module._masked_scores

    def counting(q, k, *args, **kwargs):
        scores = masked_scores(q, k, *args, **kwargs)
        computed.append(scores.shape[-2] * scores.shape[-1])
        return scores

    with mock.patch.object(attention_module, "_masked_scores", counting):
        out, cache = attention_forward(q, k, v, causal=True, block_size=256)
        assert sum(computed) == 256 * 256 * 5 // 8
        computed.clear()
        attention_backward(np.ones_like(out), cache, out=out)
        assert sum(computed) == 256 * 256 * 5 // 8


def _causal(problem: dict) -> dict:
    return {**problem, "causal": True}


def _assert_same_attention(problem: dict, settings: dict, with_out: bool, seed: int) -> None:
    """Each entry of ``settings``, name -> (block size, chunks, least rows per chunk), gives
    the same outputs and gradients as the first, to float64 rounding."""
    results = []
    for size, n, r in settings.values():
        with _chunking(n, r):
            out, cache = attention_forward(**problem, block_size=size)
            dout = np.random.default_rng(seed).standard_normal(out.shape)
            grads = attention_backward(dout, cache, out=out if with_out else None)
        results.append((out, *grads))
    reference, *others = results
    for got in others:
        for name, ref, value in zip(("out", "dq", "dk", "dv", "dbias"), reference, got):
            if ref is None:
                assert value is None, name
                continue
            assert value.shape == ref.shape, name
            np.testing.assert_allclose(value, ref, rtol=1e-10, atol=1e-11, err_msg=name)


@given(attention_problems(max_t=9).map(_causal), st.integers(2, 4), st.integers(1, 3),
       st.booleans(), st.integers(0, 2**32 - 1))  # fmt: skip
def test_chunked_equals_one_chunk(problem, chunks, rows, with_out, seed):
    """Any chunking, with masks, biases, broadcast heads and Tq != Tk (end-aligned), gives
    the one-chunk outputs and gradients to float64 rounding."""
    settings = {"one": (10**6, 1, 1), "chunked": (10**6, chunks, rows)}
    _assert_same_attention(problem, settings, with_out, seed)


@pytest.mark.parametrize("tq, tk", [(256, 256), (200, 256), (256, 300)])
def test_chunked_grouped_shapes_at_full_size_equal_one_chunk_and_inference(tq, tk):
    """The shapes grouped-query attention passes (keys broadcast over a group axis), at sizes
    that chunk with the real settings; ``attention_inference`` takes the same chunks."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 2, 3, tq, 8))
    k, v = rng.standard_normal((2, 2, 1, tk, 8)), rng.standard_normal((2, 2, 1, tk, 5))
    dout = rng.standard_normal((2, 2, 3, tq, 5))
    out, cache = attention_forward(q, k, v, causal=True)
    grads = attention_backward(dout, cache, out=out)
    with _chunking(1, 1):
        ref_out, ref_cache = attention_forward(q, k, v, causal=True)
        ref_grads = attention_backward(dout, ref_cache, out=ref_out)
    assert len(causal_chunks(tq, tk, True)) > 1
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(attention_inference(q, k, v, causal=True), ref_out,
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    for got, ref in zip(grads[:3], ref_grads[:3]):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@given(attention_problems(max_t=13).map(_causal), st.integers(2, 5), st.integers(2, 4),
       st.integers(1, 2), st.booleans(), st.integers(0, 2**32 - 1))  # fmt: skip
def test_blocked_attention_chunks_its_diagonal_blocks_and_equals_one_block(
    problem, block_size, chunks, rows, with_out, seed
):
    """Blocked attention takes a key block the causal rule cuts through in chunks of its
    rows too (``_key_blocks``): the same outputs and gradients as one unchunked block."""
    settings = {"one": (10**6, 1, 1), "blocked": (block_size, chunks, rows)}
    _assert_same_attention(problem, settings, with_out, seed)


def test_blocked_attention_at_full_size_computes_less_than_whole_diagonal_blocks():
    """T = 1,100 in blocks of 256 with the real chunk settings: equal to the one-block path,
    and the diagonal blocks' future is skipped: fewer scores than whole blocks would be."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 1100, 8)) for _ in range(3))
    dout = rng.standard_normal((1, 1100, 8))
    computed = []
    block_scores = attention_module._block_scores

    def counting(*args, **kwargs):
        scores = block_scores(*args, **kwargs)
        computed.append(scores.shape[-2] * scores.shape[-1])
        return scores

    with mock.patch.object(attention_module, "_block_scores", counting):
        out, cache = attention_forward(q, k, v, causal=True, block_size=256)
    whole_blocks = sum(min(256, 1100 - q0) * min(q0 + 256, 1100) for q0 in range(0, 1100, 256))
    assert sum(computed) < 0.9 * whole_blocks
    ref_out, ref_cache = attention_forward(q, k, v, causal=True, block_size=10**6)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    for got, ref in zip(attention_backward(dout, cache), attention_backward(dout, ref_cache)):
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-11)
