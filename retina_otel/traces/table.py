"""The bounded, columnar table of connections held open for spans, and its sorted hash index.

One row per (connection, observing side, interface class): the 5-tuple oriented to the initiator, who
observes it (the initiator's side = CLIENT span, the responder's = SERVER span), on which kind of
interface, and the running totals. Rows are found by a 64-bit hash of that key through a sorted index
(``searchsorted``), confirmed on the whole key; nothing is a Python object per connection except the
two endpoint-metadata references (shared dicts, in numpy object columns).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from retina_otel.flows import TcpFlag

__all__ = ["CLOSING", "FREE", "KEY_DTYPE", "OPEN", "ROW_DTYPE", "ConnectionTable", "Tombstones"]

FREE, OPEN, CLOSING = 0, 1, 2

KEY_DTYPE = np.dtype(
    [
        ("a", "V16"),  # initiator address
        ("b", "V16"),  # responder address
        ("pa", "<u2"),  # initiator port (0 for ICMP)
        ("pb", "<u2"),  # responder port (0 for ICMP)
        ("proto", "u1"),
        ("side", "u1"),  # 0: the initiator's side observes (CLIENT), 1: the responder's (SERVER)
        ("cls", "u1"),  # 0: pod interface, 1: node interface (targets.CLASS_*)
        ("ipver", "u1"),
    ]
)
assert KEY_DTYPE.itemsize == 40

ROW_DTYPE = np.dtype(
    [
        ("key", KEY_DTYPE),
        ("h", "<u8"),  # hash of key
        ("sym", "<u8"),  # hash of the 5-tuple, the same both ways (drop/retransmission matching)
        ("state", "u1"),
        ("all_packets", "u1"),  # reports become span events
        ("obs", "u1"),  # observation point of the first report
        ("rst_by", "u1"),  # 0 none, 1 initiator, 2 responder
        ("fin", "u1"),  # bit 0: FIN from the initiator, bit 1: from the responder
        ("pad", "V3"),
        ("start_ns", "<u8"),
        ("last_ns", "<u8"),
        ("close_at_ns", "<u8"),  # agent clock when FIN both ways / RST was seen
        ("packets", "<u8"),  # initiator -> responder
        ("bytes", "<u8"),
        ("reply_packets", "<u8"),
        ("reply_bytes", "<u8"),
        ("tcp_flags", "<u4", (len(TcpFlag),)),
        ("srtt_us", "<u4"),
        ("handshake_us", "<u4"),
        ("ifindex", "<u4"),
        ("reports", "<u4"),  # report events buffered for this row
        ("dropped_reports", "<u4"),  # report events not kept (per-span limit)
    ]
)


class ConnectionTable:
    """Fixed-capacity struct-of-rows with a free list and a sorted index of occupied rows' hashes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows = np.zeros(capacity, dtype=ROW_DTYPE)
        self.ep_a = np.full(capacity, None, dtype=object)  # initiator's endpoint metadata (a mapping)
        self.ep_b = np.full(capacity, None, dtype=object)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack: pop from the end
        self._n_free = capacity
        self._ix_h = np.zeros(0, dtype=np.uint64)
        self._ix_slot = np.zeros(0, dtype=np.int64)
        self._dirty = False

    def __len__(self) -> int:
        return self.capacity - self._n_free

    def find(self, h: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Slot of each hash, -1 when absent."""
        self._reindex()
        if not len(self._ix_h):
            return np.full(len(h), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._ix_h, h), len(self._ix_h) - 1)
        return np.where(self._ix_h[pos] == h, self._ix_slot[pos], -1)

    def allocate(self, n: int) -> npt.NDArray[np.int64]:
        """Up to ``n`` free slots (fewer when the table is full), zeroed, marked OPEN."""
        take = min(n, self._n_free)
        slots = self._free[self._n_free - take : self._n_free][::-1].copy()
        self._n_free -= take
        self.rows[slots] = np.zeros(1, dtype=ROW_DTYPE)
        self.rows["state"][slots] = OPEN
        self._dirty = True
        return slots

    def release(self, slots: npt.NDArray[np.int64]) -> None:
        if not len(slots):
            return
        self.rows["state"][slots] = FREE
        self.ep_a[slots] = None
        self.ep_b[slots] = None
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        self._dirty = True

    def occupied(self) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.rows["state"] != FREE)

    def _reindex(self) -> None:
        if not self._dirty:
            return
        occupied = self.occupied()
        hashes = self.rows["h"][occupied]
        order = np.argsort(hashes, kind="stable")
        self._ix_h, self._ix_slot = hashes[order], occupied[order]
        self._dirty = False


class Tombstones:
    """Keys of recently closed rows, so late reports of a closed connection (the last ACK, flushed by
    packetparser up to its report interval later) do not open a new span. Bounded: the oldest go first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._h = np.zeros(0, dtype=np.uint64)  # sorted
        self._until = np.zeros(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self._h)

    def add(self, h: npt.NDArray[np.uint64], until_ns: int) -> None:
        if not len(h):
            return
        hashes = np.concatenate([self._h, h])
        until = np.concatenate([self._until, np.full(len(h), until_ns, dtype=np.uint64)])
        if len(hashes) > self.capacity:
            keep = np.argsort(until, kind="stable")[len(hashes) - self.capacity :]
            hashes, until = hashes[keep], until[keep]
        order = np.argsort(hashes, kind="stable")
        self._h, self._until = hashes[order], until[order]

    def contains(self, h: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        if not len(self._h):
            return np.zeros(len(h), dtype=bool)
        pos = np.minimum(np.searchsorted(self._h, h), len(self._h) - 1)
        found: npt.NDArray[np.bool_] = self._h[pos] == h
        return found

    def remove(self, h: npt.NDArray[np.uint64]) -> None:
        if len(h) and len(self._h):
            keep = ~np.isin(self._h, h)
            self._h, self._until = self._h[keep], self._until[keep]

    def expire(self, now_ns: int) -> None:
        if len(self._h):
            keep = self._until > np.uint64(now_ns)
            if not keep.all():
                self._h, self._until = self._h[keep], self._until[keep]
