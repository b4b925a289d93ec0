"""Span events waiting for their span: drops, retransmissions, and (AllPackets) packetparser reports.

Drops and retransmissions come from other receivers, on their own schedule (dropreason drains every
10 s by default), so they are kept by the connection's direction-free hash (``sym``) and joined to
spans when a span is finished: every span of that 5-tuple whose time range covers the event takes it
(on one node the client's and the server's span both do). Reports belong to one table row (``key`` =
the row's hash). The buffer is bounded; what does not fit is counted as lost.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from retina_otel.traces.spans import EVENT_DTYPE, EventKind

__all__ = ["BUFFER_DTYPE", "EventBuffer", "Joined"]

BUFFER_DTYPE = np.dtype(
    [
        ("event", EVENT_DTYPE),
        ("start_ns", "<u8"),  # first packet the event covers (aggregated rows cover an interval)
        ("sym", "<u8"),
        ("key", "<u8"),  # 0: any span of the 5-tuple; else the hash of one table row
        ("added_ns", "<u8"),  # agent clock when buffered
    ]
)


class Joined:
    """Events joined to finished spans: ``events`` sorted by span then time, ``span`` their span index."""

    def __init__(self, events: npt.NDArray[np.void], span: npt.NDArray[np.int64], n_spans: int) -> None:
        self.events = events
        self.span = span
        self.n_spans = n_spans

    def per_span(self, kind: EventKind, column: str = "packets") -> npt.NDArray[np.uint64]:
        mask = self.events["kind"] == kind
        return np.bincount(self.span[mask], weights=self.events[column][mask], minlength=self.n_spans).astype(np.uint64)

    def first_reason(self) -> npt.NDArray[np.uint32]:
        """The earliest drop's reason per span (0 = none)."""
        out = np.zeros(self.n_spans, dtype=np.uint32)
        mask = self.events["kind"] == EventKind.DROP
        spans, first = np.unique(self.span[mask], return_index=True)
        out[spans] = self.events["reason"][mask][first]
        return out


class EventBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._rows = np.zeros(0, dtype=BUFFER_DTYPE)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: npt.NDArray[np.void]) -> int:
        """Buffer ``rows`` (BUFFER_DTYPE); returns how many did not fit."""
        room = self.capacity - len(self._rows)
        lost = max(0, len(rows) - room)
        if lost:
            rows = rows[: max(room, 0)]
        if len(rows):
            self._rows = np.concatenate([self._rows, rows])
        return lost

    def join(
        self,
        sym: npt.NDArray[np.uint64],
        key: npt.NDArray[np.uint64],
        start_ns: npt.NDArray[np.uint64],
        end_ns: npt.NDArray[np.uint64],
        slack_ns: int,
    ) -> Joined:
        """Events of each finished span (``sym``, ``key``, time range widened by ``slack_ns``)."""
        n = len(sym)
        buffered = self._rows
        if not len(buffered) or not n:
            return Joined(np.zeros(0, dtype=EVENT_DTYPE), np.zeros(0, dtype=np.int64), n)
        order = np.argsort(buffered["sym"], kind="stable")
        sorted_sym = buffered["sym"][order]
        lo = np.searchsorted(sorted_sym, sym, side="left")
        hi = np.searchsorted(sorted_sym, sym, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if not total:
            return Joined(np.zeros(0, dtype=EVENT_DTYPE), np.zeros(0, dtype=np.int64), n)
        span = np.repeat(np.arange(n, dtype=np.int64), counts)
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        candidate = buffered[order[np.repeat(lo, counts) + offsets]]
        slack = np.uint64(slack_ns)
        ok = (candidate["key"] == 0) | (candidate["key"] == key[span])
        ok &= candidate["event"]["time_ns"] + slack >= start_ns[span]
        ok &= candidate["start_ns"] <= end_ns[span] + slack
        span, candidate = span[ok], candidate[ok]
        ordered = np.lexsort((candidate["event"]["time_ns"], span))
        return Joined(candidate["event"][ordered], span[ordered], n)

    def forget_keys(self, keys: npt.NDArray[np.uint64]) -> None:
        """Drop the row-bound events (reports) of finished rows."""
        if len(self._rows) and len(keys):
            bound = self._rows["key"] != 0
            drop = bound & np.isin(self._rows["key"], keys)
            if drop.any():
                self._rows = self._rows[~drop]

    def sweep(self, live_sym: npt.NDArray[np.uint64], live_keys: npt.NDArray[np.uint64], older_than_ns: int) -> None:
        """Drop events no live row can take: row-bound events of rows that are gone, and 5-tuple events
        buffered before ``older_than_ns`` whose 5-tuple has no live row."""
        if not len(self._rows):
            return
        bound = self._rows["key"] != 0
        orphan = bound & ~np.isin(self._rows["key"], live_keys)
        stale = ~bound & (self._rows["added_ns"] < np.uint64(older_than_ns)) & ~np.isin(self._rows["sym"], live_sym)
        drop = orphan | stale
        if drop.any():
            self._rows = self._rows[~drop]
