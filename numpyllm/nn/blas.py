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
import functools
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, Literal

import numpy as np


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


SMALL_PASS = 1 << 22  # tokens * d_model below which a pass runs BLAS on one thread


def threads_for_pass(
    setting: int | Literal["auto"] | None, tokens: int | None, d_model: int
) -> int | None:
    """The "auto" policy: one BLAS thread when tokens * d_model < SMALL_PASS, else BLAS's own
    setting; an int or None ``setting`` is used as it is."""
    if setting != "auto":
        return setting
    return 1 if tokens is not None and tokens * d_model < SMALL_PASS else None


def limit_small_passes(method: Callable) -> Callable:
    """Decorate a model's ``forward`` / ``encode`` / ``backward`` to follow the model's
    ``blas_threads`` setting ("auto", an int or None) for the pass it runs.

    The pass size is the largest integer array given to ``forward`` / ``encode`` (the token
    ids); ``backward`` reuses the size of the forward it differentiates.
    """

    @functools.wraps(method)
    def run(self, *args: Any, **kwargs: Any) -> Any:
        if method.__name__ == "backward":
            tokens = self.__dict__.get("_pass_tokens")
        else:
            sizes = [
                a.size for a in (*args, *kwargs.values())
                if isinstance(a, np.ndarray) and a.dtype.kind in "iu"
            ]  # fmt: skip
            tokens = max(sizes, default=None)
            object.__setattr__(self, "_pass_tokens", tokens)
        threads = threads_for_pass(self.blas_threads, tokens, self.config.d_model)
        with blas_threads(threads):
            return method(self, *args, **kwargs)

    return run
