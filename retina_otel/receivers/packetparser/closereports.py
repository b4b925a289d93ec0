"""When the close rule writes a record on FIN or RST (``report_on_close: auto``).

The close rule's record on FIN/RST does not change any total: a finished connection's counts would go out
with the flush every report interval anyway. What it protects is those counts while they wait: the
connection table is an LRU, and when it is full a new connection evicts the least recently used entry,
unreported counts and all (nothing counts that loss). The LRU evicts only a full table, so the records are
needed only while the table could fill up before the next flush. Short connections are where they cost:
four records per connection seen at two pod veths, ~2 us of kernel and user-space time per connection
(benchmarks/results/HISTORY.md, session 10).

:class:`CloseReportGuard` decides every second (the receiver's statistics tick) from an upper bound of the
table's entries: those read at the last flush plus every entry created since (deletions ignored), plus
what the creation rate of the last second adds until the next flush and two ticks more. Records go on when
that reaches a quarter of ``conntrack_max_entries`` and off again only below an eighth (no flapping). While
they are off each CPU may create ``max_entries / (4 * CPUs)`` entries before the next tick; the CPU that
spends its budget turns the records on in the kernel (pp_common.h), so even a burst of new connections
within one second cannot fill more than half the table without them.
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any

import numpy as np

from retina_otel.bpf.mapbatch import update_batch

__all__ = ["CloseReportGuard", "needs_close_reports"]

log = logging.getLogger(__name__)

ON_AT = 0.25
"""Records on once the projected entries reach this fraction of the table."""
OFF_BELOW = 0.125
"""Records off again only once the projection is below this fraction."""
MARGIN_S = 2.0
"""Ticks of creation at the last second's rate added to the projection beyond the next flush."""


def needs_close_reports(
    entries: int, created_per_s: float, seconds_to_flush: float, max_entries: int, on_now: bool
) -> bool:
    """Whether finished connections need their record on FIN/RST now: the projected entries (``entries``,
    an upper bound of the table now, plus the creation rate until the next flush and :data:`MARGIN_S`
    more) against :data:`ON_AT` of the table, or :data:`OFF_BELOW` while the records are on."""
    projected = entries + created_per_s * (max(seconds_to_flush, 0.0) + MARGIN_S)
    return projected >= max_entries * (OFF_BELOW if on_now else ON_AT)


class CloseReportGuard:
    """Keeps the kernel's ``close_reports`` flag and per-CPU ``create_budget`` (CLOSE_REPORTS=2) current."""

    def __init__(self, bpf: Any, max_entries: int, ncpu: int, report_interval: float) -> None:
        self._flag = bpf["close_reports"]
        self._budget_fd = int(bpf["create_budget"].map_fd)
        self._max_entries = max_entries
        self._budget = max(1, max_entries // (4 * max(ncpu, 1)))
        self._ncpu = ncpu
        self._flushed_entries = 0  # entries read at the last flush (an upper bound: expired ones included)
        self._created_at_flush = 0  # the kernel's conntrack_created count then
        self._created_last = 0
        self._report_interval = report_interval
        self._last_tick = self._last_flush = time.monotonic()
        self.switches = 0
        self._set(True)  # on until the first tick has judged: the table's state is unknown before

    @property
    def on(self) -> bool:
        """Whether the kernel writes the records now (user space's decision or a CPU's spent budget)."""
        return bool(self._flag[ctypes.c_int(0)].value)

    def flushed(self, entries: int, created_total: int) -> None:
        """The flush read ``entries`` entries when the kernel had created ``created_total`` in all."""
        self._flushed_entries = entries
        self._created_at_flush = created_total
        self._last_flush = time.monotonic()

    def tick(self, created_total: int) -> bool:
        """Judge again with the kernel's ``conntrack_created`` count; returns whether the records are on."""
        now = time.monotonic()
        rate = max(0, created_total - self._created_last) / max(now - self._last_tick, 1e-3)
        self._created_last, self._last_tick = created_total, now
        seconds_to_flush = self._report_interval - (now - self._last_flush)
        entries = self._flushed_entries + max(0, created_total - self._created_at_flush)
        on_now = self.on
        want = needs_close_reports(entries, rate, seconds_to_flush, self._max_entries, on_now)
        if not want:
            # Budgets first: a CPU that creates entries between the two writes then counts against a full one.
            budgets = np.full((1, self._ncpu), self._budget, dtype=np.int64)
            update_batch(self._budget_fd, np.zeros(1, dtype=np.uint32), budgets)
        if want != on_now:
            self._set(want)
            self.switches += 1
            log.info(
                "packetparser: records on FIN/RST %s (connection table: <= %d entries, %.0f created/s, %d max)",
                "on" if want else "off (counts go out with the flush)",
                entries,
                rate,
                self._max_entries,
            )
        return want

    def _set(self, on: bool) -> None:
        self._flag[ctypes.c_int(0)] = ctypes.c_uint32(1 if on else 0)
