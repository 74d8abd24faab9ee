"""Keep freed memory in the process: glibc's defaults make CPU training page-fault every batch.

Training allocates and frees activation buffers of several MiB every batch.  With glibc's
default malloc settings those buffers are mmapped and unmapped, or trimmed off the heap,
and page-faulted back in on the next batch; a Fashion-MNIST client job ran about 1.8x
slower in a fresh process (a Flower worker) than in one whose earlier allocations had
happened to raise glibc's dynamic thresholds (experiments/bench_simulation.py).
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**30


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve allocations up to 32 MiB from the heap and to keep up to 1 GiB free there.

    Called once per process (later calls are free).  Returns False, changing nothing, where
    the C library has no ``mallopt`` (macOS, musl).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
