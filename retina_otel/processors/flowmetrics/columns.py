"""Per-batch caches: the columns of one FlowBatch, each read once, and the context codes and label
tuples of each set of context options (shared by every metric family that uses them).

:class:`Segment` and :class:`FlatRows` are the rows one context counts, and their columns concatenated
(what gets grouped).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.flows import FlowBatch
from retina_otel.processors.flowmetrics.endpoints import UNKNOWN, EndpointIndex
from retina_otel.processors.flowmetrics.grouping import group_rows, ip_codes
from retina_otel.processors.flowmetrics.labels import I64, LabelColumn, LabelValues
from retina_otel.processors.flowmetrics.spec import ContextOptions

__all__ = ["EGRESS", "INGRESS", "PORT_UNKNOWN", "BatchColumns", "ContextCodes", "FlatRows", "Segment", "ip_text"]

INGRESS, EGRESS = 1, 2
PORT_UNKNOWN = 65536

_ip_text_cache: dict[tuple[int, int], str] = {}


def ip_text(hi: int, lo: int) -> str:
    """An address's text from its two 64-bit words (IPv4-mapped addresses as IPv4), cached."""
    key = (hi, lo)
    found = _ip_text_cache.get(key)
    if found is None:
        raw = struct.pack("<QQ", hi, lo)
        if raw[:12] == b"\x00" * 10 + b"\xff\xff":
            found = str(ipaddress.IPv4Address(raw[12:]))
        else:
            found = str(ipaddress.IPv6Address(raw))
        if len(_ip_text_cache) > 200_000:
            _ip_text_cache.clear()
        _ip_text_cache[key] = found
    return found


class BatchColumns:
    """Contiguous columns of one batch, each taken from the structured array at most once."""

    def __init__(self, batch: FlowBatch, index: EndpointIndex) -> None:
        self.rec = batch.records
        self.n = len(batch)
        self.index = index
        self._cache: dict[str, Any] = {}
        self._contexts: dict[ContextOptions, ContextCodes] = {}
        # per side, the rows whose context labels any job may need (None: all); local context sets it
        self.needed: tuple[I64 | None, I64 | None] = (None, None)

    def col(self, name: str) -> npt.NDArray[Any]:
        found = self._cache.get(name)
        if found is None:
            found = self._cache[name] = np.ascontiguousarray(self.rec[name])
        return found  # type: ignore[no-any-return]

    def slot(self, side: int) -> I64:
        """EndpointIndex slot per row of ``side`` (0 src, 1 dst): entry index + 1, 0 when unknown."""
        key = f"slot{side}"
        found = self._cache.get(key)
        if found is None:
            raw = self.col("src_endpoint" if side == 0 else "dst_endpoint").astype(np.int64)
            limit = self.index.size - 1
            found = np.where((raw >= 0) & (raw < limit), raw + 1, 0)
            self._cache[key] = found
        return found  # type: ignore[no-any-return]

    def ip(self, side: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """(low, high) 64-bit words of the side's address, as in ``ip_text(high, low)``."""
        key = f"ip{side}"
        found = self._cache.get(key)
        if found is None:
            words = self.col("src_ip" if side == 0 else "dst_ip").view("<u8").reshape(-1, 2)
            found = self._cache[key] = (np.ascontiguousarray(words[:, 1]), np.ascontiguousarray(words[:, 0]))
        return found  # type: ignore[no-any-return]

    def port(self, side: int) -> I64:
        key = f"port{side}"
        found = self._cache.get(key)
        if found is None:
            proto = self.col("proto")
            raw = self.col("src_port" if side == 0 else "dst_port").astype(np.int64)
            found = np.where((proto == 6) | (proto == 17) | (proto == 132), raw, PORT_UNKNOWN)
            self._cache[key] = found
        return found  # type: ignore[no-any-return]

    def direction(self) -> I64:
        """The ``direction`` column as label codes (values past egress are labelled egress)."""
        found = self._cache.get("direction_code")
        if found is None:
            found = np.minimum(self.col("direction"), EGRESS).astype(np.int64)
            self._cache["direction_code"] = found
        return found  # type: ignore[no-any-return]

    def is_reply(self) -> I64:
        found = self._cache.get("is_reply_code")
        if found is None:
            found = self._cache["is_reply_code"] = (self.col("is_reply") != 0).astype(np.int64)
        return found  # type: ignore[no-any-return]

    def tcp_flag(self, flag: int) -> npt.NDArray[np.uint32]:
        """One counter of the wide ``tcp_flags`` column (taken alone: gathering all ten costs more)."""
        key = f"tcp_flags{flag}"
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = np.ascontiguousarray(self.rec["tcp_flags"][:, flag])
        return found  # type: ignore[no-any-return]

    def take(self, name: str, rows: I64) -> npt.NDArray[Any]:
        """``col(name)[rows]``, read straight from the records when the column is not taken yet and the
        rows are few (drops, retransmissions, DNS): a full column costs a pass over every record."""
        found = self._cache.get(name)
        if found is None and rows.shape[0] * 8 < self.n:
            return self.rec[name][rows]  # type: ignore[no-any-return]
        return self.col(name)[rows]

    def context(self, opts: ContextOptions) -> ContextCodes | None:
        """The batch's context codes for ``opts`` (``None`` when it has no labels), computed once and
        shared by every metric family that uses the same options."""
        if not opts.any:
            return None
        found = self._contexts.get(opts)
        if found is None:
            found = self._contexts[opts] = ContextCodes(self, opts)
        return found


class ContextCodes:
    """Context codes of one ContextOptions for both sides of every row.

    ``codes[side][row]`` identifies the side's label values: (slot, address, port) are folded into one
    key for the src and dst columns together (in local context only for the rows whose side is an
    eligible pod, ``BatchColumns.needed``) (one code space, so a local-context job can mix the source
    pods of some rows with the destination pods of others), factorized once per batch, then merged
    where different keys render the same labels (two slots of one namespace, say), so that groups made
    of these codes always have distinct label tuples. ``labels[code]`` is the tuple, from a cache on the
    EndpointIndex keyed by (slot, address, port) so that a batch only renders keys it has not seen.
    """

    __slots__ = ("codes", "labels", "size")

    def __init__(self, cols: BatchColumns, opts: ContextOptions) -> None:
        index = cols.index
        needed = cols.needed

        def both(column: Callable[[int], npt.NDArray[Any]]) -> npt.NDArray[Any]:
            return np.concatenate([column(side) if rows is None else column(side)[rows]
                                   for side, rows in enumerate(needed)])

        parts: list[tuple[npt.NDArray[np.integer], int]] = []
        slot: I64 | None = None
        lo: npt.NDArray[np.uint64] | None = None
        hi: npt.NDArray[np.uint64] | None = None
        port: I64 | None = None
        if opts.entry_fields or opts.ip:
            slot = both(cols.slot)
            parts.append((slot, index.size))
        if opts.ip:
            assert slot is not None
            lo = both(lambda side: cols.ip(side)[0])
            hi = both(lambda side: cols.ip(side)[1])
            parts.append(ip_codes(slot, index.size, lo, hi))
        if opts.port:
            port = both(cols.port)
            parts.append((port, PORT_UNKNOWN + 1))
        sizes = [cols.n if rows is None else int(rows.shape[0]) for rows in needed]
        grouping = group_rows(sizes[0] + sizes[1], parts)
        reps = grouping.rep
        labels = _context_labels(
            index,
            opts,
            slot[reps].tolist() if slot is not None else None,
            hi[reps].tolist() if hi is not None else None,
            lo[reps].tolist() if lo is not None else None,
            port[reps].tolist() if port is not None else None,
        )
        inverse = grouping.inverse
        distinct: dict[LabelValues, int] = {}
        merged = [distinct.setdefault(lv, len(distinct)) for lv in labels]
        if len(distinct) < len(labels):
            inverse = np.asarray(merged, dtype=np.int64)[inverse]
            labels = list(distinct)
        self.codes = (self._spread(inverse[:sizes[0]], needed[0], cols.n),
                      self._spread(inverse[sizes[0]:], needed[1], cols.n))
        self.size = len(labels)
        self.labels = labels

    @staticmethod
    def _spread(codes: I64, rows: I64 | None, n: int) -> I64:
        """Codes indexed by row; rows that were not needed get code 0 (and are never read)."""
        if rows is None:
            return codes
        out = np.zeros(n, dtype=np.int64)
        out[rows] = codes
        return out


@dataclass(frozen=True, slots=True)
class Segment:
    """Rows counted one way. Local context: ``pod_side`` is the side (0 src, 1 dst) whose pod the series
    belongs to and ``direction`` the label they get; remote context leaves both ``None``."""

    rows: I64
    pod_side: int | None = None
    direction: int | None = None


class FlatRows:
    """Columns of a list of segments, concatenated (what gets grouped)."""

    def __init__(self, cols: BatchColumns, segments: Sequence[Segment]) -> None:
        self.cols = cols
        self.segments = [s for s in segments if s.rows.shape[0]]
        self.n = sum(int(s.rows.shape[0]) for s in self.segments)

    @staticmethod
    def _cat(parts: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def rows(self) -> I64:
        return self._cat([s.rows for s in self.segments])

    def column(self, name: str) -> npt.NDArray[Any]:
        return self._cat([self.cols.take(name, s.rows) for s in self.segments])

    def direction(self) -> I64:
        return self._cat([
            np.full(s.rows.shape[0], s.direction, dtype=np.int64) if s.direction is not None
            else self.cols.direction()[s.rows]
            for s in self.segments
        ])

    def is_reply(self) -> I64:
        is_reply = self.cols.is_reply()
        return self._cat([is_reply[s.rows] for s in self.segments])

    def context(self, ctx: int, opts: ContextOptions) -> tuple[LabelColumn, int] | None:
        """(label table, codes per flat row) and the code count of context ``ctx`` (0 = source, or the
        pod in local context; 1 = destination); ``None`` when ``opts`` has no labels."""
        side_codes = self.cols.context(opts)
        if side_codes is None:
            return None
        codes = self._cat([side_codes.codes[ctx if s.pod_side is None else s.pod_side][s.rows]
                           for s in self.segments])
        return (side_codes.labels, codes), side_codes.size


def _context_labels(
    index: EndpointIndex,
    opts: ContextOptions,
    slots: list[int] | None,
    his: list[int] | None,
    los: list[int] | None,
    ports: list[int] | None,
) -> list[LabelValues]:
    """Label tuples in Retina's order: ip, entry fields, port, zone."""
    cache = index.label_cache(opts)
    length = len(next(v for v in (slots, his, ports) if v is not None))

    def values(column: list[int] | None) -> Iterable[int]:
        return column if column is not None else repeat(0, length)

    out: list[LabelValues] = []
    append = out.append
    get = cache.get
    context = index.context
    for key in zip(values(slots), values(his), values(los), values(ports), strict=True):
        found = get(key)
        if found is None:
            slot, hi, lo, port = key
            head, tail = context(opts, slot)
            if opts.ip:
                head = (ip_text(hi, lo), *head)
            if opts.port:
                head = (*head, UNKNOWN if port == PORT_UNKNOWN else str(port))
            found = cache[key] = head + tail
        append(found)
    return out
