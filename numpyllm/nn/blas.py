"""Run a block of code with NumPy's BLAS limited to a given number of threads.

Why a model would ask for fewer BLAS threads: the matrices of a small transformer
(d_model up to ~128 on a few thousand tokens) take well under a millisecond each, and
handing half of one to a second thread costs a thread wake-up; on a machine whose cores
are shared with other work, a waiting BLAS thread can lose a whole scheduler slice
(milliseconds) per matmul. Measured on the 2-core development machine under load: a
small GPT trained at 13k tokens/s with one BLAS thread against 0.6-4k with two.

Uses threadpoolctl when it is installed; without it the block runs unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Literal


@lru_cache(maxsize=1)
def _blas_pools():
    """threadpoolctl's handle on the loaded BLAS libraries, found once (finding costs ~1 ms)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    pools = ThreadpoolController().select(user_api="blas")
    return pools if pools.lib_controllers else None


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Within the block, BLAS uses at most ``n`` threads; ``None`` leaves it as it is.

    Cheap enough to enter once per forward or backward pass (~25 us).
    """
    pools = _blas_pools() if n is not None else None
    if pools is None:
        yield
        return
    with pools.limit(limits=n):
        yield


def current_threads() -> int | None:
    """The fewest threads any loaded BLAS will use now; None when that is unknown (no
    threadpoolctl, so no way to limit them either)."""
    pools = _blas_pools()
    if pools is None:
        return None
    return min(int(lib.num_threads) for lib in pools.lib_controllers)


# tokens * d_model below which a pass runs BLAS on one thread. Measured on 2 busy cores: a
# GPT of d_model 384 trained on 2k tokens at 2.4k tokens/s on 1 thread, 0.08k on 2.
SMALL_PASS = 1 << 22


def threads_for_pass(
    setting: int | Literal["auto"] | None, tokens: int | None, d_model: int
) -> int | None:
    """The "auto" policy: one BLAS thread when tokens * d_model < SMALL_PASS, else BLAS's own
    setting; an int or None ``setting`` is used as it is."""
    if setting != "auto":
        return setting
    return 1 if tokens is not None and tokens * d_model < SMALL_PASS else None


# Weight matrices of at least this many elements make a generation step use BLAS's own
# thread count ("auto" setting). A step's matrix-vector products read every weight once and
# are bound by memory bandwidth: once the matrices are megabytes, a second thread's
# bandwidth pays for its wake-up. Measured here, d_model 384 (matrices of 0.6M elements):
# 600 us a token for the products on two threads, 835 us on one; d_model 128 (65k): no gain.
LARGE_WEIGHT = 1 << 18


def threads_for_step(setting: int | Literal["auto"] | None, largest_weight: int) -> int | None:
    """The "auto" policy for one token step of generation, whose largest weight matrix holds
    ``largest_weight`` elements: one BLAS thread below LARGE_WEIGHT, else BLAS's own setting;
    an int or None ``setting`` is used as it is."""
    if setting != "auto":
        return setting
    return None if largest_weight >= LARGE_WEIGHT else 1
