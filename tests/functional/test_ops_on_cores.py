"""Element-wise ops over the cores of an unsplit pass: the GELUs, SwiGLU's backward, softmax
and cross-entropy take their chunks (or blocks of rows) on as many threads as BLAS may use,
and give the same bits on any number of threads."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional import activations, losses, softmax, swiglu
from numpyllm.nn import blas, parallel
from tests.functional.strategies import seeds


@contextlib.contextmanager
def cores(threads: int, chunk: int = 64) -> Iterator[list[int]]:
    """Ops run as if BLAS had ``threads`` threads on a machine of 8 cores, in chunks (and row
    blocks) of ``chunk`` elements and with no size below which they stay on one thread, so
    that small arrays take many parts. Yields the list of part counts ``run_parts`` was
    given."""
    calls: list[int] = []
    real_run_parts = parallel.run_parts

    def counting_run_parts(tasks: list[Callable[[], object]]) -> list[object]:
        calls.append(len(tasks))
        return real_run_parts(tasks)

    with (
        mock.patch.object(blas, "current_threads", lambda: threads),
        mock.patch.object(parallel, "available_cores", lambda: 8),
        mock.patch.object(parallel, "run_parts", counting_run_parts),
        mock.patch.object(parallel, "MIN_SPREAD_ELEMENTS", 0),
        mock.patch.object(activations, "CHUNK_ELEMENTS", chunk),
        mock.patch.object(softmax, "BLOCK_ELEMENTS", chunk),
        mock.patch.object(losses, "ROW_BLOCK_ELEMENTS", chunk),
    ):
        yield calls


def _ops(seed: int, rows: int, width: int, dtype: type) -> dict[str, Callable[[], tuple]]:
    """name -> a function running the op's forward and backward on fixed random arrays."""
    rng = np.random.default_rng(seed)
    x, g, u = (rng.standard_normal((rows, width)).astype(dtype) for _ in range(3))
    targets = rng.integers(0, width, size=rows)
    targets[rng.random(rows) < 0.2] = -100  # some positions ignored

    def gelu_tanh() -> tuple:
        y, cache = activations.gelu_tanh_forward(x)
        return y, activations.gelu_tanh_backward(g, cache)

    def gelu() -> tuple:
        y, cache = activations.gelu_forward(x)
        return y, activations.gelu_backward(g, cache)

    def swiglu_pair() -> tuple:
        h, cache = swiglu.swiglu_forward(x, u)
        return (h, *swiglu.swiglu_backward(g, cache))

    def softmax_pair() -> tuple:
        y, cache = softmax.softmax_forward(x)
        return y, softmax.softmax_backward(g, cache)

    def cross_entropy() -> tuple:
        loss, cache = losses.cross_entropy_forward(x, targets)
        return loss, losses.cross_entropy_backward(0.5, cache)

    return {"gelu_tanh": gelu_tanh, "gelu": gelu, "swiglu": swiglu_pair,
            "softmax": softmax_pair, "cross_entropy": cross_entropy}  # fmt: skip


@given(seed=seeds(), rows=st.integers(1, 40), width=st.integers(1, 50),
       threads=st.integers(2, 4), dtype=st.sampled_from([np.float32, np.float64]))  # fmt: skip
def test_every_op_gives_the_same_bits_on_any_number_of_threads(seed, rows, width, threads, dtype):
    """In many small chunks on one thread or several, the bits of the op taken whole: chunks
    are elementwise slices or whole rows, so cutting them changes no operation."""
    for name, op in _ops(seed, rows, width, dtype).items():
        with cores(1, chunk=1 << 30):
            whole = op()
        with cores(1):
            alone = op()
        with cores(threads) as calls:
            spread = op()
        for w, a, b in zip(whole, alone, spread, strict=True):
            np.testing.assert_array_equal(a, w, err_msg=name)
            np.testing.assert_array_equal(b, w, err_msg=name)
            assert np.asarray(a).dtype == np.asarray(b).dtype == dtype, name
        if rows * width > 2 * 64:  # more than one chunk or block: the parts went to threads
            assert calls and all(n >= 2 for n in calls), (name, calls)


@pytest.mark.parametrize("op", ["gelu_tanh", "gelu", "swiglu", "softmax", "cross_entropy"])
def test_one_blas_thread_keeps_an_op_on_its_own_thread(op):
    """Inside one part of a split batch BLAS has one thread: the op hands nothing to another."""
    with cores(1) as calls:
        _ops(0, 30, 40, np.float32)[op]()
    assert calls == []


def test_ops_below_the_spread_size_stay_on_their_own_thread():
    with cores(2) as calls, mock.patch.object(parallel, "MIN_SPREAD_ELEMENTS", 30 * 40 + 1):
        for op in _ops(0, 30, 40, np.float32).values():
            op()
    assert calls == []


# ---- on_cores itself -------------------------------------------------------------------
def test_on_cores_runs_every_part_once_on_several_threads_at_once():
    """Two parts wait for each other at a barrier: only threads running at once get past."""
    barrier = threading.Barrier(2, timeout=5.0)
    done: list[int] = []
    lock = threading.Lock()

    def run(part: int) -> None:
        if part < 2:
            barrier.wait()
        with lock:
            done.append(part)

    with mock.patch.object(blas, "current_threads", lambda: 2), \
            mock.patch.object(parallel, "available_cores", lambda: 2):  # fmt: skip
        parallel.on_cores(run, list(range(10)))
    assert sorted(done) == list(range(10))


def test_on_cores_runs_in_turn_on_one_thread():
    seen: list[tuple[int, int]] = []
    with mock.patch.object(blas, "current_threads", lambda: 1):
        parallel.on_cores(lambda part: seen.append((part, threading.get_ident())), [3, 1, 2])
    assert [p for p, _ in seen] == [3, 1, 2]
    assert {ident for _, ident in seen} == {threading.get_ident()}


def test_on_cores_raises_a_parts_error_after_every_thread_has_stopped():
    def run(part: int) -> None:
        if part == 5:
            raise ValueError("part 5 failed")

    with mock.patch.object(blas, "current_threads", lambda: 2), \
            mock.patch.object(parallel, "available_cores", lambda: 2), \
            pytest.raises(ValueError, match="part 5"):  # fmt: skip
        parallel.on_cores(run, list(range(8)))
