"""Kernel clocks as BPF programs see them, and their relation to user-space clocks.

* :func:`wall_offset_ns`: add it to a ``bpf_ktime_get_ns`` / ``CLOCK_MONOTONIC`` timestamp to get unix
  epoch nanoseconds.
* :func:`kernel_hz`: the kernel's tick rate (``CONFIG_HZ``). ``bpf_jiffies64()`` is the cheapest time a
  BPF program can read (one load behind a helper call; ``bpf_ktime_get_coarse_ns`` takes a seqcount
  loop, measured ~17 ns more per call in a VM), so per-packet code that only needs tick resolution
  counts in jiffies scaled by ``1e9 / HZ``. That clock has its own origin; programs export one sample of
  it next to ``bpf_ktime_get_ns`` so user space can translate (see packetparser's ``pp_clock``).
"""

from __future__ import annotations

import gzip
import re
import time
from functools import cache
from pathlib import Path

__all__ = ["kernel_hz", "wall_offset_ns"]

_STANDARD_HZ = (100, 250, 300, 1000)


def wall_offset_ns() -> int:
    """Unix epoch ns minus ``CLOCK_MONOTONIC`` ns, now."""
    return time.time_ns() - time.monotonic_ns()


def _hz_from_config(path: Path) -> int | None:
    try:
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=", 1)[1])
    except (OSError, ValueError, EOFError):
        return None
    return None


def _timer_list_sample(path: Path) -> tuple[int, int] | None:
    """``(now ns, jiffies)`` from /proc/timer_list (root only). The ``jiffies:`` line follows CPU 0's
    list of active timers, which can run to many KB on a busy node: read lines until both are seen."""
    now: int | None = None
    try:
        with path.open() as f:
            for line in f:
                if now is None:
                    found = re.match(r"now at (\d+) nsecs", line)
                    now = int(found.group(1)) if found else None
                elif line.startswith("jiffies: "):
                    return now, int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _hz_from_timer_list(path: Path, seconds: float) -> int | None:
    first = _timer_list_sample(path)
    time.sleep(seconds)
    second = _timer_list_sample(path)
    if first is None or second is None or second[0] <= first[0]:
        return None
    rate = (second[1] - first[1]) * 1e9 / (second[0] - first[0])
    best = min(_STANDARD_HZ, key=lambda hz: abs(hz - rate))
    return best if abs(best - rate) < 0.1 * best else None


@cache
def kernel_hz() -> int | None:
    """``CONFIG_HZ`` from /proc/config.gz, else measured from /proc/timer_list; None when unknown."""
    hz = _hz_from_config(Path("/proc/config.gz"))
    if hz is None:
        hz = _hz_from_timer_list(Path("/proc/timer_list"), 0.2)
    return hz
