"""Exact draining of a per-flow BPF hash map, with two maps and a generation switch.

Reading a map in batches and deleting what was read leaves a window in which another CPU can add to
an entry after it was copied and before it is deleted: that increment would be lost. So programs that
count per flow keep two maps, ``<name>0`` and ``<name>1``, and a one-slot array ``<gen>`` saying which
one to write. User space flips the generation, waits a moment for programs already running (they are
short, under RCU), then drains the map nobody writes any more.
"""

from __future__ import annotations

import ctypes as ct
import time
from typing import Any

__all__ = ["swap"]

SETTLE_SECONDS = 0.002


def swap(bpf: Any, maps: str, gen: str = "flow_gen") -> str:
    """Point the kernel at the other map of the pair ``maps`` and return the one it wrote until now."""
    table = bpf[gen]
    current = int(table[ct.c_int(0)].value)
    table[ct.c_int(0)] = ct.c_uint32(1 - current)
    time.sleep(SETTLE_SECONDS)
    return f"{maps}{current}"
