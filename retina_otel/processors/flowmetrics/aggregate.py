"""Turn one FlowBatch into per-series increments for every planned metric, with numpy.

Row selection (Retina's verdict semantics mapped onto :data:`~retina_otel.flows.FLOW_DTYPE`):

* forward: ``event == FLOW`` and ``verdict == FORWARDED``; ``packets``/``bytes`` count src -> dst.
  ``reply_packets``/``reply_bytes`` are not counted: receivers report each direction in rows of its
  own, and the reply columns only repeat those packets for the flow record (see ``flows.FLOW_DTYPE``).
* drop: ``verdict == DROPPED`` (dropreason rows, or any receiver's dropped rows); count
  ``max(packets, 1)``.
* tcpflags: the forward rows with ``proto == 6``; each ``tcp_flags`` column is a count per flag.
* tcpretrans: ``event == RETRANSMIT``; count ``retransmits`` (or ``max(packets, 1)`` when 0).
* dns: ``event == DNS``, requests (``dns_is_response == 0``) and responses, one message per row.

Local context: a row counts as *egress* of its source pod and as *ingress* of its destination pod,
each only when that endpoint is a local pod (``retina.endpoint.local``) in an allowed namespace. DNS
counts once per row (Retina): the destination pod for ingress rows when both ends are local.
Remote context: a row counts once, with ``source_*`` and ``destination_*`` labels, when either end is
in an allowed namespace (all rows when no namespace filter is set).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import add, itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.dnsnames import rcode_name
from retina_otel.dnsnames import type_name as qtype_name
from retina_otel.flows import STRINGS, Event, FlowBatch, ObservationPoint, TcpFlag, Verdict
from retina_otel.processors.flowmetrics.endpoints import UNKNOWN, EndpointIndex
from retina_otel.processors.flowmetrics.grouping import group_rows, ip_codes
from retina_otel.processors.flowmetrics.spec import AdvMetric, ContextOptions, MetricPlan, Plan

__all__ = ["Aggregator", "BatchResult"]

LabelValues = tuple[str, ...]
I64 = npt.NDArray[np.int64]
LabelColumn = tuple[Sequence[LabelValues], I64 | None]  # label table, codes per row (None: all table[0])

DIRECTION_LABELS: tuple[LabelValues, ...] = (("unknown",), ("ingress",), ("egress",))
IS_REPLY_LABELS: tuple[LabelValues, ...] = (("false",), ("true",))
_INGRESS, _EGRESS = 1, 2
_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 1: "ICMPv4", 58: "ICMPv6", 132: "SCTP"}  # Hubble's protocol label
_VERDICT_LABELS: list[tuple[str, ...]] = [("UNKNOWN",), ("FORWARDED",), ("DROPPED",)]  # Hubble's verdict names
_PORT_UNKNOWN = 65536
_FLAG_NAMES = tuple(f.name for f in TcpFlag)

@dataclass
class BatchResult:
    """Increments per metric name and label values; histogram observations per series."""

    counters: dict[str, dict[LabelValues, float]] = field(default_factory=dict)
    histograms: dict[str, list[tuple[LabelValues, npt.NDArray[np.float64]]]] = field(default_factory=dict)

    def add(self, name: str, labels: LabelValues, value: float) -> None:
        series = self.counters.setdefault(name, {})
        series[labels] = series.get(labels, 0.0) + value


_ip_text_cache: dict[tuple[int, int], str] = {}


def _ip_text(hi: int, lo: int) -> str:
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


class _Columns:
    """Contiguous columns of one batch, each taken from the structured array at most once."""

    def __init__(self, batch: FlowBatch, index: EndpointIndex) -> None:
        self.rec = batch.records
        self.n = len(batch)
        self.index = index
        self._cache: dict[str, Any] = {}
        self._contexts: dict[ContextOptions, _SideCodes] = {}
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
        """(low, high) 64-bit words of the side's address, as in ``_ip_text(high, low)``."""
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
            found = np.where((proto == 6) | (proto == 17) | (proto == 132), raw, _PORT_UNKNOWN)
            self._cache[key] = found
        return found  # type: ignore[no-any-return]

    def direction(self) -> I64:
        """The ``direction`` column as label codes (values past egress are labelled egress)."""
        found = self._cache.get("direction_code")
        if found is None:
            found = np.minimum(self.col("direction"), _EGRESS).astype(np.int64)
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

    def context(self, opts: ContextOptions) -> _SideCodes | None:
        """The batch's context codes for ``opts`` (``None`` when it has no labels), computed once and
        shared by every metric family that uses the same options."""
        if not opts.any:
            return None
        found = self._contexts.get(opts)
        if found is None:
            found = self._contexts[opts] = _SideCodes(self, opts)
        return found


class _SideCodes:
    """Context codes of one ContextOptions for both sides of every row.

    ``codes[side][row]`` identifies the side's label values: (slot, address, port) are folded into one
    key for the src and dst columns together (in local context only for the rows whose side is an
    eligible pod, ``_Columns.needed``) (one code space, so a local-context job can mix the source
    pods of some rows with the destination pods of others), factorized once per batch, then merged
    where different keys render the same labels (two slots of one namespace, say), so that groups made
    of these codes always have distinct label tuples. ``labels[code]`` is the tuple, from a cache on the
    EndpointIndex keyed by (slot, address, port) so that a batch only renders keys it has not seen.
    """

    __slots__ = ("codes", "labels", "size")

    def __init__(self, cols: _Columns, opts: ContextOptions) -> None:
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
            parts.append((port, _PORT_UNKNOWN + 1))
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
class _Segment:
    """Rows counted one way. Local context: ``pod_side`` is the side (0 src, 1 dst) whose pod the series
    belongs to and ``direction`` the label they get; remote context leaves both ``None``."""

    rows: I64
    pod_side: int | None = None
    direction: int | None = None


class _Flat:
    """Columns of a list of segments, concatenated (what gets grouped)."""

    def __init__(self, cols: _Columns, segments: Sequence[_Segment]) -> None:
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
                head = (_ip_text(hi, lo), *head)
            if opts.port:
                head = (*head, UNKNOWN if port == _PORT_UNKNOWN else str(port))
            found = cache[key] = head + tail
        append(found)
    return out



def _pick(table: Sequence[LabelValues], codes: list[int]) -> list[LabelValues]:
    """``[table[c] for c in codes]``, in C."""
    if len(codes) <= 1:
        return [table[c] for c in codes]
    return list(itemgetter(*codes)(table))


def _compose(rep: I64, columns: Sequence[LabelColumn]) -> list[LabelValues]:
    """Each group's label tuple: per column, ``table[codes[rep[g]]]`` (``table[0]`` when codes is None),
    concatenated in column order."""
    size = rep.shape[0]
    if size == 0:
        return []
    used = [(table, codes) for table, codes in columns if codes is not None or table[0]]
    if not used:
        return [()] * size
    picks = [_pick(table, codes[rep].tolist()) if codes is not None else [table[0]] * size for table, codes in used]
    out = picks[0]
    for more in picks[1:]:
        out = list(map(add, out, more))
    return out


def _merge(series: dict[LabelValues, float], labels: Sequence[LabelValues], sums: npt.NDArray[np.float64]) -> None:
    """Add the non-zero group sums into a metric's series.

    The groups of one grouping have distinct label tuples (context and reason codes are merged where
    their labels agree), so an empty series takes them as they are."""
    nonzero = np.flatnonzero(sums)
    if nonzero.shape[0] < sums.shape[0]:
        labels = _pick(labels, nonzero.tolist())
        sums = sums[nonzero]
    if not series:
        series.update(zip(labels, sums.tolist(), strict=True))
        return
    get = series.get
    for lv, amount in zip(labels, sums.tolist(), strict=True):
        series[lv] = get(lv, 0.0) + amount


def _reason_column(reasons: npt.NDArray[np.integer]) -> tuple[I64, int, list[LabelValues]]:
    """Dense codes, their count and labels for ``drop_reason`` ids (names from STRINGS, 0 = unknown);
    ids with the same label (0 and ids past the table) share a code."""
    uniq, inverse = np.unique(reasons, return_inverse=True)
    names = STRINGS.names()
    distinct: dict[LabelValues, int] = {}
    merged = [distinct.setdefault((names[r] if 0 < r < len(names) else UNKNOWN,), len(distinct))
              for r in uniq.tolist()]
    codes = np.asarray(merged, dtype=np.int64)[inverse.reshape(-1)]
    return codes, len(distinct), list(distinct)


def _request_keys(batch: FlowBatch, cols: _Columns, rows: I64) -> tuple[I64, list[LabelValues]]:
    """Per-row id (indexed by row) of the (query_type, query) labels of DNS requests, and the labels.

    The only Python loop over rows, and only over DNS rows: their names live in ``batch.dns``."""
    extras: Sequence[Mapping[str, Any] | None] = batch.dns or ()
    n_extra = len(extras)
    ids: dict[LabelValues, int] = {}
    out: list[int] = []
    for row, qt in zip(rows.tolist(), cols.take("dns_qtype", rows).tolist(), strict=True):
        extra = extras[row] if row < n_extra else None
        if extra:
            key = (str(extra.get("query_type") or "") or qtype_name(qt), str(extra.get("query") or ""))
        else:
            key = (qtype_name(qt), "")
        ident = ids.get(key)
        if ident is None:
            ident = ids[key] = len(ids)
        out.append(ident)
    codes = np.zeros(cols.n, dtype=np.int64)
    codes[rows] = out
    return codes, list(ids)


def _response_keys(
    batch: FlowBatch, cols: _Columns, rows: I64
) -> tuple[I64, list[LabelValues], I64, list[LabelValues]]:
    """Like :func:`_request_keys` for responses: (return_code, query_type, query, response, num_response)
    ids and labels, then the (return_code, query_type) ids and labels of the latency histogram."""
    extras: Sequence[Mapping[str, Any] | None] = batch.dns or ()
    n_extra = len(extras)
    ids: dict[LabelValues, int] = {}
    lat_ids: dict[LabelValues, int] = {}
    out: list[int] = []
    lat_out: list[int] = []
    for row, qt, rc, count in zip(
        rows.tolist(),
        cols.take("dns_qtype", rows).tolist(),
        cols.take("dns_rcode", rows).tolist(),
        cols.take("dns_answer_count", rows).tolist(),
        strict=True,
    ):
        extra = extras[row] if row < n_extra else None
        if extra:
            rcode = str(extra.get("return_code") or "") or rcode_name(rc)
            qtype = str(extra.get("query_type") or "") or qtype_name(qt)
            answers = extra.get("answers")
            key = (rcode, qtype, str(extra.get("query") or ""),
                   ",".join(map(str, answers)) if answers else "", str(count))
        else:
            rcode = rcode_name(rc)
            qtype = qtype_name(qt)
            key = (rcode, qtype, "", "", str(count))
        ident = ids.get(key)
        if ident is None:
            ident = ids[key] = len(ids)
        out.append(ident)
        lkey = (rcode, qtype)
        lident = lat_ids.get(lkey)
        if lident is None:
            lident = lat_ids[lkey] = len(lat_ids)
        lat_out.append(lident)
    codes = np.zeros(cols.n, dtype=np.int64)
    codes[rows] = out
    lat_codes = np.zeros(cols.n, dtype=np.int64)
    lat_codes[rows] = lat_out
    return codes, list(ids), lat_codes, list(lat_ids)


class Aggregator:
    """Stateless per batch except for the EndpointIndex cache (one per EndpointTable generation, which
    also holds the context label tuples already built)."""

    def __init__(self, *, node_metrics: bool = False) -> None:
        self.node_metrics = node_metrics
        self._index: EndpointIndex | None = None

    def index_for(self, entries: Sequence[Mapping[str, Any]]) -> EndpointIndex:
        index = self._index
        if index is None or index.entries is not entries:
            index = self._index = EndpointIndex(entries)
        return index

    # -- entry point -------------------------------------------------------------------------------
    def process(self, batch: FlowBatch, plan: Plan) -> BatchResult:
        result = BatchResult()
        n = len(batch)
        if n == 0 or (not plan.metrics and not self.node_metrics):
            return result
        cols = _Columns(batch, self.index_for(batch.endpoints.entries))
        if plan.metrics and not any(mp.remote for mp in plan.metrics.values()):
            eligible = self._eligible(cols.index, plan)
            cols.needed = (np.flatnonzero(eligible[cols.slot(0)]), np.flatnonzero(eligible[cols.slot(1)]))
        event = cols.col("event")
        verdict = cols.col("verdict")
        forward_rows = np.flatnonzero((event == Event.FLOW) & (verdict == Verdict.FORWARDED))
        metrics = plan.metrics

        if AdvMetric.FORWARD_COUNT in metrics or AdvMetric.FORWARD_BYTES in metrics:
            self._counts(result, cols, plan, forward_rows,
                         [(AdvMetric.FORWARD_COUNT, "packets"), (AdvMetric.FORWARD_BYTES, "bytes")])
        if self.node_metrics:
            self._node(result, cols, forward_rows, "forward")

        wants_drop = AdvMetric.DROP_COUNT in metrics or AdvMetric.DROP_BYTES in metrics
        if wants_drop or self.node_metrics:
            drop_rows = np.flatnonzero(verdict == Verdict.DROPPED)
            if wants_drop:
                self._counts(result, cols, plan, drop_rows,
                             [(AdvMetric.DROP_COUNT, "drop_packets"), (AdvMetric.DROP_BYTES, "bytes")],
                             reason=True)
            if self.node_metrics:
                self._node(result, cols, drop_rows, "drop")

        if AdvMetric.TCPFLAGS in metrics:
            tcp_rows = forward_rows[cols.col("proto")[forward_rows] == 6]
            self._tcpflags(result, cols, plan, metrics[AdvMetric.TCPFLAGS], tcp_rows)

        if AdvMetric.TCPRETRANS in metrics:
            retrans_rows = np.flatnonzero(event == Event.RETRANSMIT)
            self._counts(result, cols, plan, retrans_rows, [(AdvMetric.TCPRETRANS, "retransmits")])

        if AdvMetric.FLOWS_TO_WORLD in metrics:
            self._flows_to_world(result, cols, plan, metrics[AdvMetric.FLOWS_TO_WORLD])
        if AdvMetric.ZONE_BYTES in metrics:
            self._zone_bytes(result, cols, plan, metrics[AdvMetric.ZONE_BYTES], forward_rows)

        dns_metrics = [m for m in (AdvMetric.DNS_REQUEST, AdvMetric.DNS_RESPONSE, AdvMetric.DNS_LATENCY)
                       if m in metrics]
        if dns_metrics or self.node_metrics:
            dns_rows = np.flatnonzero(event == Event.DNS)
            if dns_rows.shape[0]:
                self._dns(result, batch, cols, plan, dns_rows, dns_metrics)
        return result

    # -- segments per context ----------------------------------------------------------------------
    @staticmethod
    def _context_segments(cols: _Columns, plan: Plan, rows: I64, remote: bool, *, dns: bool = False) -> list[_Segment]:
        """The rows each context counts, so that every packet counts once per pod (local context) or
        once per source/destination pair (remote context).

        packetparser sees a packet between two pods of this node twice, leaving the source
        (FROM_ENDPOINT, the source pod's veth) and entering the destination (TO_ENDPOINT), and a
        packet to or from another node also at the host interface (FROM/TO_NETWORK). Local context
        takes a pod's egress only from its own veth's FROM_ENDPOINT rows and its ingress only from
        TO_ENDPOINT rows; remote context drops the second sighting of a packet (TO_ENDPOINT rows from
        a local pod, host-interface rows with a local pod at either end). Rows of other observation
        points (kernel tracepoints, unknown) count for both sides as before.
        """
        index = cols.index
        obs = cols.col("observation_point")[rows]
        from_endpoint = obs == ObservationPoint.FROM_ENDPOINT
        to_endpoint = obs == ObservationPoint.TO_ENDPOINT
        network = (obs == ObservationPoint.FROM_NETWORK) | (obs == ObservationPoint.TO_NETWORK)
        allowed = index.allowed(plan)
        if remote:
            src_local = index.local[cols.slot(0)[rows]]
            dst_local = index.local[cols.slot(1)[rows]]
            seen_before = (to_endpoint & src_local) | (network & (src_local | dst_local))
            rows = rows[~seen_before]
            if not plan.filters_namespaces:
                return [_Segment(rows)]
            keep = allowed[cols.slot(0)[rows]] | allowed[cols.slot(1)[rows]]
            return [_Segment(rows[keep])]
        eligible = Aggregator._eligible(index, plan)
        src_ok = eligible[cols.slot(0)[rows]] & ~(to_endpoint | network)
        dst_ok = eligible[cols.slot(1)[rows]] & ~(from_endpoint | network)
        if dns:  # once per row: the destination pod for ingress rows when both ends are local
            use_dst = dst_ok & (~src_ok | (cols.col("direction")[rows] == _INGRESS))
            dst_ok = use_dst
            src_ok = src_ok & ~use_dst
        return [_Segment(rows[src_ok], pod_side=0, direction=_EGRESS),
                _Segment(rows[dst_ok], pod_side=1, direction=_INGRESS)]

    @staticmethod
    def _eligible(index: EndpointIndex, plan: Plan) -> npt.NDArray[np.bool_]:
        """Slots that get local-context series: local pods in an allowed namespace."""
        eligible = index.local & index.allowed(plan)
        eligible[0] = False
        return eligible

    @staticmethod
    def _add_contexts(
        flat: _Flat, mp: MetricPlan, parts: list[tuple[npt.NDArray[np.integer], int]], columns: list[LabelColumn]
    ) -> None:
        """Append the context codes and label columns of ``mp`` (source then destination in remote)."""
        sides = ((0, mp.source), (1, mp.destination)) if mp.remote else ((0, mp.source),)
        for ctx, opts in sides:
            found = flat.context(ctx, opts)
            if found is not None:
                column, size = found
                assert column[1] is not None
                parts.append((column[1], size))
                columns.append(column)

    @staticmethod
    def _plan_key(mp: MetricPlan) -> tuple[Any, ...]:
        return (mp.remote, mp.source, mp.destination if mp.remote else None, mp.is_reply)

    # -- jobs --------------------------------------------------------------------------------------
    def _counts(
        self,
        result: BatchResult,
        cols: _Columns,
        plan: Plan,
        rows: I64,
        wanted: Sequence[tuple[AdvMetric, str]],
        *,
        reason: bool = False,
    ) -> None:
        """Forward, drop and retransmission metrics: base labels (reason,) direction."""
        jobs: dict[tuple[Any, ...], list[tuple[MetricPlan, str]]] = {}
        for metric, value in wanted:
            mp = plan.metrics.get(metric)
            if mp is not None:
                jobs.setdefault(self._plan_key(mp), []).append((mp, value))
        for members in jobs.values():
            mp0 = members[0][0]
            flat = _Flat(cols, self._context_segments(cols, plan, rows, mp0.remote))
            if flat.n == 0:
                continue
            parts: list[tuple[npt.NDArray[np.integer], int]] = []
            columns: list[LabelColumn] = []
            if reason:
                codes, size, table = _reason_column(flat.column("drop_reason"))
                parts.append((codes, size))
                columns.append((table, codes))
            direction = flat.direction()
            parts.append((direction, 3))
            columns.append((DIRECTION_LABELS, direction))
            self._add_contexts(flat, mp0, parts, columns)
            if mp0.is_reply:
                is_reply = flat.is_reply()
                parts.append((is_reply, 2))
                columns.append((IS_REPLY_LABELS, is_reply))
            grouping = group_rows(flat.n, parts)
            labels = _compose(grouping.rep, columns)
            for mp, value in members:
                _merge(result.counters.setdefault(mp.name, {}), labels, grouping.sums(self._values(flat, value)))

    @staticmethod
    def _values(flat: _Flat, value: str) -> npt.NDArray[Any]:
        out: npt.NDArray[Any]
        if value == "drop_packets":
            out = np.maximum(flat.column("packets"), 1)
        elif value == "retransmits":
            retrans = flat.column("retransmits")
            out = np.where(retrans > 0, retrans, np.maximum(flat.column("packets"), 1))
        else:
            out = flat.column(value)
        return out

    def _tcpflags(self, result: BatchResult, cols: _Columns, plan: Plan, mp: MetricPlan, rows: I64) -> None:
        flat = _Flat(cols, self._context_segments(cols, plan, rows, mp.remote))
        if flat.n == 0:
            return
        parts: list[tuple[npt.NDArray[np.integer], int]] = []
        columns: list[LabelColumn] = []
        self._add_contexts(flat, mp, parts, columns)
        grouping = group_rows(flat.n, parts)
        labels = _compose(grouping.rep, columns)
        flat_rows = flat.rows()
        series = result.counters.setdefault(mp.name, {})
        for f, flag in enumerate(_FLAG_NAMES):
            column = cols.tcp_flag(f)
            if not column.any():
                continue
            sums = grouping.sums(column[flat_rows])
            name = (flag,)
            _merge(series, [name + lv for lv in _pick(labels, np.flatnonzero(sums).tolist())], sums[sums != 0])

    def _dns(
        self,
        result: BatchResult,
        batch: FlowBatch,
        cols: _Columns,
        plan: Plan,
        rows: I64,
        metrics: Sequence[AdvMetric],
    ) -> None:
        is_resp = cols.take("dns_is_response", rows) != 0
        request_rows = rows[~is_resp]
        response_rows = rows[is_resp]
        request: tuple[I64, list[LabelValues]] | None = None
        response: tuple[I64, list[LabelValues], I64, list[LabelValues]] | None = None
        for metric in metrics:
            mp = plan.metrics[metric]
            if metric is AdvMetric.DNS_REQUEST:
                request = request or _request_keys(batch, cols, request_rows)
                chosen, (key_col, key_labels) = request_rows, request
            else:
                response = response or _response_keys(batch, cols, response_rows)
                if metric is AdvMetric.DNS_RESPONSE:
                    chosen, key_col, key_labels = response_rows, response[0], response[1]
                else:
                    latency = cols.take("dns_latency_us", response_rows)
                    chosen, key_col, key_labels = response_rows[latency > 0], response[2], response[3]
            flat = _Flat(cols, self._context_segments(cols, plan, chosen, mp.remote, dns=True))
            if flat.n == 0:
                continue
            flat_rows = flat.rows()
            key_codes = key_col[flat_rows]
            parts: list[tuple[npt.NDArray[np.integer], int]] = [(key_codes, max(len(key_labels), 1))]
            columns: list[LabelColumn] = [(key_labels, key_codes)]
            self._add_contexts(flat, mp, parts, columns)
            grouping = group_rows(flat.n, parts)
            labels = _compose(grouping.rep, columns)
            if metric is AdvMetric.DNS_LATENCY:
                values_ms = cols.take("dns_latency_us", flat_rows).astype(np.float64) / 1000.0
                order = np.argsort(grouping.inverse, kind="stable")
                bounds = np.searchsorted(grouping.inverse[order], np.arange(grouping.size + 1)).tolist()
                hist = result.histograms.setdefault(mp.name, [])
                for g, lv in enumerate(labels):
                    hist.append((lv, values_ms[order[bounds[g]:bounds[g + 1]]]))
            else:
                sums = grouping.sums(np.maximum(flat.column("packets"), 1))
                _merge(result.counters.setdefault(mp.name, {}), labels, sums)
        if self.node_metrics:
            result.add("networkobservability_dns_request_count", (), float(request_rows.shape[0]))
            result.add("networkobservability_dns_response_count", (), float(response_rows.shape[0]))

    def _flows_to_world(self, result: BatchResult, cols: _Columns, plan: Plan, mp: MetricPlan) -> None:
        """Hubble's flows-to-world: non-reply flow and drop rows whose destination is outside the cluster
        (unknown to k8sattributes, or ``world`` for the networks processor); labels protocol, verdict."""
        event = cols.col("event")
        verdict = cols.col("verdict")
        counted = ((event == Event.FLOW) | (event == Event.DROP)) & (verdict != Verdict.UNKNOWN)
        rows = np.flatnonzero(counted & (cols.is_reply() == 0) & cols.index.world[cols.slot(1)])
        flat = _Flat(cols, self._context_segments(cols, plan, rows, mp.remote))
        if flat.n == 0:
            return
        proto = flat.column("proto").astype(np.int64)
        protos, proto_codes = np.unique(proto, return_inverse=True)
        proto_table = [(_PROTOCOL_NAMES.get(int(p), str(int(p))),) for p in protos.tolist()]
        verdicts = flat.column("verdict").astype(np.int64)
        parts: list[tuple[npt.NDArray[np.integer], int]] = [(proto_codes, len(proto_table)), (verdicts, 3)]
        columns: list[LabelColumn] = [(proto_table, proto_codes), (_VERDICT_LABELS, verdicts)]
        self._add_contexts(flat, mp, parts, columns)
        grouping = group_rows(flat.n, parts)
        labels = _compose(grouping.rep, columns)
        values = np.maximum(flat.column("packets"), 1)
        _merge(result.counters.setdefault(mp.name, {}), labels, grouping.sums(values))

    def _zone_bytes(self, result: BatchResult, cols: _Columns, plan: Plan, mp: MetricPlan, rows: I64) -> None:
        """Forwarded bytes by (source zone, destination zone), each packet once (the remote-context rule)."""
        flat = _Flat(cols, self._context_segments(cols, plan, rows, True))
        if flat.n == 0:
            return
        index = cols.index
        zone_codes: dict[str, int] = {}
        per_slot = np.asarray([zone_codes.setdefault(z, len(zone_codes)) for z in index.zones], dtype=np.int64)
        table = [(z,) for z in zone_codes]
        flat_rows = flat.rows()
        src = per_slot[cols.slot(0)[flat_rows]]
        dst = per_slot[cols.slot(1)[flat_rows]]
        parts: list[tuple[npt.NDArray[np.integer], int]] = [(src, len(table)), (dst, len(table))]
        columns: list[LabelColumn] = [(table, src), (table, dst)]
        if mp.remote:
            self._add_contexts(flat, mp, parts, columns)
        grouping = group_rows(flat.n, parts)
        labels = _compose(grouping.rep, columns)
        _merge(result.counters.setdefault(mp.name, {}), labels, grouping.sums(flat.column("bytes")))

    def _node(self, result: BatchResult, cols: _Columns, rows: I64, kind: str) -> None:
        """Basic node-level counters from flows (only when no receiver writes them)."""
        flat = _Flat(cols, [_Segment(rows)])
        if flat.n == 0:
            return
        parts: list[tuple[npt.NDArray[np.integer], int]] = []
        columns: list[LabelColumn] = []
        if kind == "drop":
            codes, size, table = _reason_column(flat.column("drop_reason"))
            parts.append((codes, size))
            columns.append((table, codes))
        direction = flat.direction()
        parts.append((direction, 3))
        columns.append((DIRECTION_LABELS, direction))
        grouping = group_rows(flat.n, parts)
        labels = _compose(grouping.rep, columns)
        packets = np.maximum(flat.column("packets"), 1) if kind == "drop" else flat.column("packets")
        for suffix, values in (("count", packets), ("bytes", flat.column("bytes"))):
            _merge(result.counters.setdefault(f"networkobservability_{kind}_{suffix}", {}), labels,
                   grouping.sums(values))
