"""Keep freed memory in the process, so a training step does not pay to map it again.

A training step allocates and frees the same few dozen arrays every time (activations,
gradients, temporaries of a few hundred KiB to a few MiB each). With glibc's default
settings, blocks above 128 KiB may be mapped fresh from the kernel and unmapped on free,
and the top of the heap is returned to the kernel as soon as it is free; either way the
next step touches new pages, and every new 4 KiB page is a page fault the kernel must
zero. Measured on a 2-core machine, a tiny GPT (d_model 64, 2k tokens a step) took ~8,000
page faults a step and trained at 90k tokens/s; with the thresholds below, none, and 120k.

Raising glibc's mmap and trim thresholds keeps blocks below ``mmap_threshold`` on the heap
and up to ``trim_threshold`` of free heap in the process: the arrays of one step reuse
the pages of the last. The cost is that freed memory is returned to the kernel later.
This changes a process-wide setting, once, at import; elsewhere (macOS, Windows, musl)
nothing happens.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Ask glibc's malloc to serve blocks below ``mmap_threshold`` bytes from the heap and to
    keep up to ``trim_threshold`` bytes of free heap. Returns False where this is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return bool(ok_mmap and ok_trim)
