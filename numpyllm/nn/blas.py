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
