"""glibc malloc tuned for a long-running agent whose peaks come and go (flow churn, big batches).

By default glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
large numpy arrays (flow batches, map snapshots) come from the heap and their pages stay resident after
they are freed; and each thread that allocates may get its own arena (up to 8 per core), each keeping
freed memory of its own. Measured with the whole-agent benchmark's churn (150,000 new flows, OTLP down,
single runs): peak RSS 232 MB untuned, 219-236 MB tuned (within the run-to-run spread); RSS after the
churn 231 MB untuned, 195-222 MB tuned. Without glibc (musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["tune_for_daemon"]

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
"""Blocks from this size up are mmapped and go back to the kernel when freed (a fixed value also turns
off glibc's dynamic threshold)."""
ARENA_MAX = 2


def tune_for_daemon() -> bool:
    """Set a fixed mmap threshold and at most two arenas; True when glibc took both. Call early, before
    threads allocate."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
