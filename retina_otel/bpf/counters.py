"""Cumulative counters kept by BPF programs in per-CPU array slots, read as growth since the last read."""

from __future__ import annotations

from typing import Any

__all__ = ["CounterDeltas"]


class CounterDeltas:
    """Slots ``0..slots-1`` of a bcc per-CPU array, summed over CPUs; :meth:`read` returns how much each
    grew since the previous read (the programs only ever add to them)."""

    def __init__(self, slots: int) -> None:
        self._seen = [0] * slots

    def read(self, table: Any) -> list[int]:
        totals = [int(table.sum(table.Key(slot)).value) for slot in range(len(self._seen))]
        deltas = [total - seen for total, seen in zip(totals, self._seen, strict=True)]
        self._seen = totals
        return deltas
