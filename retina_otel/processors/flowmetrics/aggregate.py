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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.flows import STRINGS, Event, FlowBatch, TcpFlag, Verdict
from retina_otel.processors.flowmetrics.endpoints import UNKNOWN, EndpointIndex
from retina_otel.processors.flowmetrics.grouping import Grouping, group_rows, ip_codes
from retina_otel.processors.flowmetrics.spec import AdvMetric, ContextOptions, MetricPlan, Plan

__all__ = ["Aggregator", "BatchResult", "qtype_name", "rcode_name"]

LabelValues = tuple[str, ...]
I64 = npt.NDArray[np.int64]

DIRECTION_NAMES = ("unknown", "ingress", "egress")
_INGRESS, _EGRESS = 1, 2
_PORT_UNKNOWN = 65536
_FLAG_NAMES = tuple(f.name for f in TcpFlag)

_QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA",
}
_RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
    7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}


def qtype_name(qtype: int) -> str:
    return _QTYPES.get(qtype, f"TYPE{qtype}")


def rcode_name(rcode: int) -> str:
    return _RCODES.get(rcode, f"RCODE{rcode}")


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
    """Lazily extracted, contiguous columns of one batch (each read at most once)."""

    def __init__(self, batch: FlowBatch, index: EndpointIndex) -> None:
        self.rec = batch.records
        self.n = len(batch)
        self.index = index
        self._cache: dict[str, Any] = {}

    def col(self, name: str) -> npt.NDArray[Any]:
        found = self._cache.get(name)
        if found is None:
            found = self._cache[name] = np.ascontiguousarray(self.rec[name])
        return found  # type: ignore[no-any-return]

    def slot(self, side: int) -> I64:
        key = f"slot{side}"
        found = self._cache.get(key)
        if found is None:
            raw = self.col("src_endpoint" if side == 0 else "dst_endpoint").astype(np.int64)
            limit = self.index.size - 1
            found = np.where((raw >= 0) & (raw < limit), raw + 1, 0)
            self._cache[key] = found
        return found  # type: ignore[no-any-return]

    def ip(self, side: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
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


@dataclass(frozen=True, slots=True)
class _Segment:
    """Rows counted one way: ``flip`` swaps src/dst (reply counters); ``pod_side`` (local context) is the
    physical side whose pod the series belongs to, ``direction`` the label it gets."""

    rows: I64
    flip: bool = False
    pod_side: int | None = None
    direction: int | None = None


class _Flat:
    """Columns of a list of segments, concatenated (what gets grouped)."""

    def __init__(self, cols: _Columns, segments: Sequence[_Segment]) -> None:
        self.cols = cols
        self.segments = [s for s in segments if s.rows.shape[0]]
        self.n = sum(int(s.rows.shape[0]) for s in self.segments)

    def _cat(self, fn: Callable[[_Segment], npt.NDArray[Any]], dtype: Any) -> npt.NDArray[Any]:
        if not self.segments:
            return np.zeros(0, dtype=dtype)
        parts = [fn(s) for s in self.segments]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def rows(self) -> I64:
        return self._cat(lambda s: s.rows, np.int64)

    def column(self, name: str) -> npt.NDArray[Any]:
        return self._cat(lambda s: self.cols.col(name)[s.rows], np.int64)

    def value(self, name: str) -> npt.NDArray[Any]:
        reply = "reply_" + name
        return self._cat(lambda s: self.cols.col(reply if s.flip else name)[s.rows], np.uint64)

    def _physical(self, s: _Segment, ctx: int) -> int:
        """ctx 0 = source context (or the pod in local context), 1 = destination context."""
        if s.pod_side is not None:
            return s.pod_side
        return ctx ^ int(s.flip)

    def slot(self, ctx: int) -> I64:
        return self._cat(lambda s: self.cols.slot(self._physical(s, ctx))[s.rows], np.int64)

    def ip(self, ctx: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        lo = self._cat(lambda s: self.cols.ip(self._physical(s, ctx))[0][s.rows], np.uint64)
        hi = self._cat(lambda s: self.cols.ip(self._physical(s, ctx))[1][s.rows], np.uint64)
        return lo, hi

    def port(self, ctx: int) -> I64:
        return self._cat(lambda s: self.cols.port(self._physical(s, ctx))[s.rows], np.int64)

    def direction(self) -> I64:
        def one(s: _Segment) -> I64:
            if s.direction is not None:
                return np.full(s.rows.shape[0], s.direction, dtype=np.int64)
            d = self.cols.col("direction")[s.rows].astype(np.int64)
            if s.flip:
                d = np.where(d == _INGRESS, _EGRESS, np.where(d == _EGRESS, _INGRESS, d))
            return np.minimum(d, 3 - 1) if d.size and d.max() > 2 else d

        return self._cat(one, np.int64)

    def is_reply(self) -> I64:
        return self._cat(
            lambda s: (self.cols.col("is_reply")[s.rows].astype(np.int64) != 0) ^ s.flip, np.int64
        ).astype(np.int64)


class _CtxCodes:
    """The key parts and label builders of one context (a side's ContextOptions)."""

    def __init__(self, flat: _Flat, ctx: int, opts: ContextOptions, index: EndpointIndex) -> None:
        self.opts = opts
        self.index = index
        self.parts: list[tuple[npt.NDArray[np.integer], int]] = []
        self.slot: I64 | None = None
        self.lo: npt.NDArray[np.uint64] | None = None
        self.hi: npt.NDArray[np.uint64] | None = None
        self.port: I64 | None = None
        if opts.entry_fields or opts.ip:
            self.slot = flat.slot(ctx)
            self.parts.append((self.slot, index.size))
        if opts.ip:
            assert self.slot is not None
            self.lo, self.hi = flat.ip(ctx)
            self.parts.append(ip_codes(self.slot, index.size, self.lo, self.hi))
        if opts.port:
            self.port = flat.port(ctx)
            self.parts.append((self.port, _PORT_UNKNOWN + 1))

    def labels(self, reps: I64) -> list[LabelValues]:
        n = reps.shape[0]
        slots = self.slot[reps].tolist() if self.slot is not None else [0] * n
        ips: list[str] | None = None
        if self.lo is not None and self.hi is not None:
            ips = [_ip_text(h, lo) for h, lo in zip(self.hi[reps].tolist(), self.lo[reps].tolist(), strict=True)]
        ports: list[str] | None = None
        if self.port is not None:
            ports = [UNKNOWN if p == _PORT_UNKNOWN else str(p) for p in self.port[reps].tolist()]
        out: list[LabelValues] = []
        context = self.index.context
        opts = self.opts
        for i, slot in enumerate(slots):
            head, tail = context(opts, slot)
            values: LabelValues = head
            if ips is not None:
                values = (ips[i], *values)
            if ports is not None:
                values = (*values, ports[i])
            if tail:
                values = values + tail
            out.append(values)
        return out


class _DnsKeys:
    """Per-row ids of the DNS label combinations (a Python loop over DNS rows only)."""

    def __init__(self, batch: FlowBatch, cols: _Columns, rows: I64) -> None:
        self.request = np.zeros(cols.n, dtype=np.int64)
        self.response = np.zeros(cols.n, dtype=np.int64)
        self.latency = np.zeros(cols.n, dtype=np.int64)
        self.request_labels: list[LabelValues] = []
        self.response_labels: list[LabelValues] = []
        self.latency_labels: list[LabelValues] = []
        req_ids: dict[LabelValues, int] = {}
        resp_ids: dict[LabelValues, int] = {}
        lat_ids: dict[LabelValues, int] = {}
        extras = batch.dns
        rec = cols.rec
        is_resp = rec["dns_is_response"][rows].tolist()
        qtypes = rec["dns_qtype"][rows].tolist()
        rcodes = rec["dns_rcode"][rows].tolist()
        counts = rec["dns_answer_count"][rows].tolist()
        for i, row in enumerate(rows.tolist()):
            extra: Mapping[str, Any] | None = extras[row] if extras is not None and row < len(extras) else None
            qtype = str(extra.get("query_type") or "") if extra else ""
            qtype = qtype or qtype_name(qtypes[i])
            query = str(extra.get("query") or "") if extra else ""
            if is_resp[i]:
                rcode = str(extra.get("return_code") or "") if extra else ""
                rcode = rcode or rcode_name(rcodes[i])
                answers = extra.get("answers") if extra else None
                response = ",".join(str(a) for a in answers) if answers else ""
                key = (rcode, qtype, query, response, str(counts[i]))
                ident = resp_ids.get(key)
                if ident is None:
                    ident = resp_ids[key] = len(self.response_labels)
                    self.response_labels.append(key)
                self.response[row] = ident
                lkey = (rcode, qtype)
                lident = lat_ids.get(lkey)
                if lident is None:
                    lident = lat_ids[lkey] = len(self.latency_labels)
                    self.latency_labels.append(lkey)
                self.latency[row] = lident
            else:
                rkey = (qtype, query)
                ident = req_ids.get(rkey)
                if ident is None:
                    ident = req_ids[rkey] = len(self.request_labels)
                    self.request_labels.append(rkey)
                self.request[row] = ident


class Aggregator:
    """Stateless per batch except for the EndpointIndex cache (one per EndpointTable generation)."""

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
        index = self.index_for(batch.endpoints.entries)
        cols = _Columns(batch, index)
        event = cols.col("event")
        verdict = cols.col("verdict")
        forward_rows = np.flatnonzero((event == Event.FLOW) & (verdict == Verdict.FORWARDED))
        metrics = plan.metrics

        wants_forward = AdvMetric.FORWARD_COUNT in metrics or AdvMetric.FORWARD_BYTES in metrics
        if wants_forward or self.node_metrics:
            fwd_segments = [_Segment(forward_rows)]
            if wants_forward:
                self._counts(result, cols, plan, fwd_segments,
                             [(AdvMetric.FORWARD_COUNT, "packets"), (AdvMetric.FORWARD_BYTES, "bytes")])
            if self.node_metrics:
                self._node(result, cols, fwd_segments, "forward", reason=False)

        drop_rows: I64 | None = None
        if AdvMetric.DROP_COUNT in metrics or AdvMetric.DROP_BYTES in metrics or self.node_metrics:
            drop_rows = np.flatnonzero(verdict == Verdict.DROPPED)
            if AdvMetric.DROP_COUNT in metrics or AdvMetric.DROP_BYTES in metrics:
                self._counts(result, cols, plan, [_Segment(drop_rows)],
                             [(AdvMetric.DROP_COUNT, "drop_packets"), (AdvMetric.DROP_BYTES, "bytes")],
                             reason=True)
            if self.node_metrics:
                self._node(result, cols, [_Segment(drop_rows)], "drop", reason=True)

        if AdvMetric.TCPFLAGS in metrics:
            tcp_rows = forward_rows[cols.col("proto")[forward_rows] == 6]
            self._tcpflags(result, cols, plan, metrics[AdvMetric.TCPFLAGS], tcp_rows)

        if AdvMetric.TCPRETRANS in metrics:
            retrans_rows = np.flatnonzero(event == Event.RETRANSMIT)
            self._counts(result, cols, plan, [_Segment(retrans_rows)],
                         [(AdvMetric.TCPRETRANS, "retransmits")])

        dns_metrics = [m for m in (AdvMetric.DNS_REQUEST, AdvMetric.DNS_RESPONSE, AdvMetric.DNS_LATENCY)
                       if m in metrics]
        if dns_metrics or self.node_metrics:
            dns_rows = np.flatnonzero(event == Event.DNS)
            if dns_rows.shape[0]:
                self._dns(result, batch, cols, plan, dns_rows, dns_metrics)
        return result

    # -- segments per context ----------------------------------------------------------------------
    def _context_segments(
        self, cols: _Columns, plan: Plan, segments: Sequence[_Segment], remote: bool, *, dns: bool = False
    ) -> list[_Segment]:
        index = cols.index
        allowed = index.allowed(plan)
        if remote:
            if not plan.filters_namespaces:
                return list(segments)
            out = []
            for s in segments:
                keep = allowed[cols.slot(0)[s.rows]] | allowed[cols.slot(1)[s.rows]]
                out.append(_Segment(s.rows[keep], s.flip))
            return out
        eligible = index.local & allowed
        eligible[0] = False
        out = []
        for s in segments:
            src_ok = eligible[cols.slot(0)[s.rows]]
            dst_ok = eligible[cols.slot(1)[s.rows]]
            if s.flip:
                src_ok, dst_ok = dst_ok, src_ok
            if dns:
                d = cols.col("direction")[s.rows]
                use_dst = dst_ok & (~src_ok | (d == _INGRESS))
                use_src = src_ok & ~use_dst
                out.append(_Segment(s.rows[use_src], s.flip, pod_side=0 ^ int(s.flip), direction=_EGRESS))
                out.append(_Segment(s.rows[use_dst], s.flip, pod_side=1 ^ int(s.flip), direction=_INGRESS))
            else:
                # physical side of the logical source is 0 ^ flip: the source pod's egress
                out.append(_Segment(s.rows[src_ok], s.flip, pod_side=0 ^ int(s.flip), direction=_EGRESS))
                out.append(_Segment(s.rows[dst_ok], s.flip, pod_side=1 ^ int(s.flip), direction=_INGRESS))
        return out

    def _context(self, flat: _Flat, mp: MetricPlan) -> list[_CtxCodes]:
        index = flat.cols.index
        if mp.remote:
            return [_CtxCodes(flat, 0, mp.source, index), _CtxCodes(flat, 1, mp.destination, index)]
        return [_CtxCodes(flat, 0, mp.source, index)]

    @staticmethod
    def _plan_key(mp: MetricPlan) -> tuple[Any, ...]:
        return (mp.remote, mp.source, mp.destination if mp.remote else None, mp.is_reply)

    # -- jobs --------------------------------------------------------------------------------------
    def _counts(
        self,
        result: BatchResult,
        cols: _Columns,
        plan: Plan,
        segments: Sequence[_Segment],
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
            flat = _Flat(cols, self._context_segments(cols, plan, segments, mp0.remote))
            if flat.n == 0:
                continue
            parts: list[tuple[npt.NDArray[np.integer], int]] = []
            reasons: I64 | None = None
            if reason:
                reasons = flat.column("drop_reason")
                parts.append((reasons, int(reasons.max()) + 1))
            direction = flat.direction()
            parts.append((direction, 3))
            contexts = self._context(flat, mp0)
            for ctx in contexts:
                parts.extend(ctx.parts)
            is_reply = flat.is_reply() if mp0.is_reply else None
            if is_reply is not None:
                parts.append((is_reply, 2))
            grouping = group_rows(flat.n, parts)
            labels = self._labels(grouping, contexts, reasons, direction, is_reply)
            for mp, value in members:
                sums = grouping.sums(self._values(flat, value))
                series = result.counters.setdefault(mp.name, {})
                for lv, amount in zip(labels, sums.tolist(), strict=True):
                    if amount:
                        series[lv] = series.get(lv, 0.0) + amount

    @staticmethod
    def _values(flat: _Flat, value: str) -> npt.NDArray[Any]:
        out: npt.NDArray[Any]
        if value == "drop_packets":
            out = np.maximum(flat.value("packets"), 1)
        elif value == "retransmits":
            retrans = flat.column("retransmits")
            out = np.where(retrans > 0, retrans, np.maximum(flat.column("packets"), 1))
        else:
            out = flat.value(value)
        return out

    @staticmethod
    def _labels(
        grouping: Grouping,
        contexts: Sequence[_CtxCodes],
        reasons: I64 | None,
        direction: I64 | None,
        is_reply: I64 | None,
        base: list[LabelValues] | None = None,
    ) -> list[LabelValues]:
        reps = grouping.rep
        columns: list[list[LabelValues]] = []
        if base is not None:
            columns.append(base)
        if reasons is not None:
            names = STRINGS.names()
            columns.append([(names[r] if 0 <= r < len(names) and r else UNKNOWN,) for r in reasons[reps].tolist()])
        if direction is not None:
            columns.append([(DIRECTION_NAMES[d],) for d in direction[reps].tolist()])
        for ctx in contexts:
            columns.append(ctx.labels(reps))
        if is_reply is not None:
            columns.append([("true",) if r else ("false",) for r in is_reply[reps].tolist()])
        if not columns:
            return [() for _ in range(grouping.size)]
        if len(columns) == 1:
            return columns[0]
        return [sum(parts, ()) for parts in zip(*columns, strict=True)]

    def _tcpflags(self, result: BatchResult, cols: _Columns, plan: Plan, mp: MetricPlan, rows: I64) -> None:
        flat = _Flat(cols, self._context_segments(cols, plan, [_Segment(rows)], mp.remote))
        if flat.n == 0:
            return
        contexts = self._context(flat, mp)
        parts: list[tuple[npt.NDArray[np.integer], int]] = []
        for ctx in contexts:
            parts.extend(ctx.parts)
        grouping = group_rows(flat.n, parts)
        labels = self._labels(grouping, contexts, None, None, None)
        flags = cols.rec["tcp_flags"][flat.rows()]  # gather only these rows: the column is wide
        series = result.counters.setdefault(mp.name, {})
        for f, name in enumerate(_FLAG_NAMES):
            column = flags[:, f]
            if not column.any():
                continue
            sums = grouping.sums(column)
            for g in np.flatnonzero(sums).tolist():
                lv = (name, *labels[g])
                series[lv] = series.get(lv, 0.0) + float(sums[g])

    def _dns(
        self,
        result: BatchResult,
        batch: FlowBatch,
        cols: _Columns,
        plan: Plan,
        rows: I64,
        metrics: Sequence[AdvMetric],
    ) -> None:
        keys = _DnsKeys(batch, cols, rows)
        is_resp = cols.rec["dns_is_response"][rows] != 0
        request_rows = rows[~is_resp]
        response_rows = rows[is_resp]
        for metric in metrics:
            mp = plan.metrics[metric]
            if metric is AdvMetric.DNS_REQUEST:
                chosen, key_col, key_labels = request_rows, keys.request, keys.request_labels
            elif metric is AdvMetric.DNS_RESPONSE:
                chosen, key_col, key_labels = response_rows, keys.response, keys.response_labels
            else:
                latency = cols.rec["dns_latency_us"][response_rows]
                chosen, key_col, key_labels = response_rows[latency > 0], keys.latency, keys.latency_labels
            flat = _Flat(cols, self._context_segments(cols, plan, [_Segment(chosen)], mp.remote, dns=True))
            if flat.n == 0:
                continue
            flat_rows = flat.rows()
            key_codes = key_col[flat_rows]
            parts: list[tuple[npt.NDArray[np.integer], int]] = [(key_codes, max(len(key_labels), 1))]
            contexts = self._context(flat, mp)
            for ctx in contexts:
                parts.extend(ctx.parts)
            grouping = group_rows(flat.n, parts)
            base = [key_labels[k] for k in key_codes[grouping.rep].tolist()]
            labels = self._labels(grouping, contexts, None, None, None, base=base)
            if metric is AdvMetric.DNS_LATENCY:
                values_ms = cols.rec["dns_latency_us"][flat_rows].astype(np.float64) / 1000.0
                order = np.argsort(grouping.inverse, kind="stable")
                bounds = np.searchsorted(grouping.inverse[order], np.arange(grouping.size + 1))
                hist = result.histograms.setdefault(mp.name, [])
                for g in range(grouping.size):
                    hist.append((labels[g], values_ms[order[bounds[g]:bounds[g + 1]]]))
            else:
                sums = grouping.sums(np.maximum(flat.column("packets"), 1))
                series = result.counters.setdefault(mp.name, {})
                for lv, amount in zip(labels, sums.tolist(), strict=True):
                    series[lv] = series.get(lv, 0.0) + amount
        if self.node_metrics:
            result.add("networkobservability_dns_request_count", (), float(request_rows.shape[0]))
            result.add("networkobservability_dns_response_count", (), float(response_rows.shape[0]))

    def _node(self, result: BatchResult, cols: _Columns, segments: Sequence[_Segment], kind: str,
              *, reason: bool) -> None:
        """Basic node-level counters from flows (only when no receiver writes them)."""
        flat = _Flat(cols, segments)
        if flat.n == 0:
            return
        parts: list[tuple[npt.NDArray[np.integer], int]] = []
        reasons: I64 | None = None
        if reason:
            reasons = flat.column("drop_reason")
            parts.append((reasons, int(reasons.max()) + 1))
        direction = flat.direction()
        parts.append((direction, 3))
        grouping = group_rows(flat.n, parts)
        labels = self._labels(grouping, [], reasons, direction, None)
        packets = np.maximum(flat.value("packets"), 1) if kind == "drop" else flat.value("packets")
        for suffix, values in (("count", packets), ("bytes", flat.value("bytes"))):
            series = result.counters.setdefault(f"networkobservability_{kind}_{suffix}", {})
            for lv, amount in zip(labels, grouping.sums(values).tolist(), strict=True):
                if amount:
                    series[lv] = series.get(lv, 0.0) + amount
