"""Hubble's metric handlers over a columnar flow batch.

Hubble counts flow events; here one packet counted in a row is one event (what Hubble reports with
monitor aggregation off, and what Retina's packetparser reports at aggregation ``low``), so the totals
do not depend on the report interval or the aggregation level. A DNS message is one event, a dropped
packet one, a retransmitted segment one.

Every handler groups its rows by integer codes (endpoint slots, direction, address codes when an ``ip``
context is asked for, and the handler's own columns) with :func:`group_rows`, then renders the labels
of one representative row per group: no Python work per row, except for DNS rows whose names live in
``batch.dns`` (as in flowmetrics).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.flows import STRINGS, Event, FlowBatch, ObservationPoint, TcpFlag, Verdict
from retina_otel.processors.flowmetrics.grouping import group_rows, ip_codes
from retina_otel.processors.hubblemetrics.endpoints import SlotStrings
from retina_otel.processors.hubblemetrics.icmp import icmp_type_name
from retina_otel.processors.hubblemetrics.spec import ContextOptions, MetricSpec

__all__ = ["FAMILIES", "HubbleAggregator", "family_labels"]

I64 = npt.NDArray[np.int64]
LabelValues = tuple[str, ...]
Series = dict[LabelValues, float]

FAMILIES: dict[str, tuple[tuple[str, str], ...]] = {
    # handler -> ((metric name, Hubble's help text), ...)
    "flow": (("hubble_flows_processed_total", "Total number of flows processed"),),
    "tcp": (("hubble_tcp_flags_total", "TCP flag occurrences"),),
    "drop": (("hubble_drop_total", "Number of drops"),),
    "dns": (
        ("hubble_dns_queries_total", "Number of DNS queries observed"),
        ("hubble_dns_responses_total", "Number of DNS queries observed"),
    ),
    "icmp": (("hubble_icmp_total", "Number of ICMP messages"),),
    "port-distribution": (("hubble_port_distribution_total", "Numbers of packets distributed by destination port"),),
}

# Retina's Hubble flows: leaving a pod is TraceToStack, entering it TraceToLxc (pkg/utils ToFlow).
_SUBTYPE = {
    ObservationPoint.FROM_ENDPOINT: "to-stack",
    ObservationPoint.TO_ENDPOINT: "to-endpoint",
    ObservationPoint.FROM_NETWORK: "from-network",
    ObservationPoint.TO_NETWORK: "to-network",
}
# Retina's own verdict numbers for DNS and retransmission flows, which Hubble prints as numbers.
_VERDICT_DNS, _VERDICT_RETRANSMISSION = "16", "15"
_VERDICTS = {Verdict.FORWARDED: "FORWARDED", Verdict.DROPPED: "DROPPED"}
_L4 = {6: "TCP", 17: "UDP", 1: "ICMPv4", 58: "ICMPv6", 132: "SCTP"}
_DIRECTIONS = ("unknown", "ingress", "egress")
_TCP_FLAGS = ((TcpFlag.FIN, "FIN"), (TcpFlag.SYN, "SYN"), (TcpFlag.SYNACK, "SYN-ACK"), (TcpFlag.RST, "RST"))
_QTYPE_AAAA = 28

# Hubble's rcode names (pkg/hubble/metrics/dns/rcode.go).
RCODE_NAMES = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
    5: "Query Refused", 6: "Name Exists when it should not", 7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not", 9: "Not Authorized", 10: "Name not contained in zone",
    11: "DSO-TYPE Not Implemented", 16: "Bad OPT Version", 17: "Key not recognized",
    18: "Signature out of time window", 19: "Bad TKEY Mode", 20: "Duplicate key name",
    21: "Algorithm not supported", 22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}


def family_labels(spec: MetricSpec) -> tuple[str, ...]:
    """Label names of the handler's families, in Hubble's order."""
    ctx = spec.context.label_names()
    if spec.handler == "flow":
        return ("protocol", "type", "subtype", "verdict", *ctx)
    if spec.handler == "tcp":
        return ("flag", "family", *ctx)
    if spec.handler == "drop":
        return (*ctx, "reason", "protocol")
    if spec.handler == "dns":
        return (*ctx, "rcode", "qtypes", "ips_returned", *(("query",) if "query" in spec.flags else ()))
    if spec.handler == "icmp":
        return ("family", "type", *ctx)
    return ("protocol", "port", *ctx)


def _ip(raw: np.void) -> str:
    data = raw.tobytes()
    if data[:12] == b"\x00" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(data[12:]))
    return str(ipaddress.IPv6Address(data))


def _family(version: int) -> str:
    return "IPv6" if version == 6 else "IPv4"


@dataclass
class _Batch:
    """One batch's columns, each taken once, and the endpoint strings of its table generation."""

    batch: FlowBatch
    slots: SlotStrings

    def __post_init__(self) -> None:
        self.rec = self.batch.records
        self._cache: dict[str, Any] = {}

    def col(self, name: str) -> npt.NDArray[Any]:
        found = self._cache.get(name)
        if found is None:
            found = self._cache[name] = np.ascontiguousarray(self.rec[name])
        return found  # type: ignore[no-any-return]

    def slot(self, side: str) -> I64:
        found = self._cache.get(f"slot_{side}")
        if found is None:
            raw = self.col(f"{side}_endpoint").astype(np.int64)
            found = np.where((raw >= 0) & (raw < self.slots.size - 1), raw + 1, 0)
            self._cache[f"slot_{side}"] = found
        return found  # type: ignore[no-any-return]

    def direction(self) -> I64:
        found = self._cache.get("direction_code")
        if found is None:
            found = self._cache["direction_code"] = np.minimum(self.col("direction"), 2).astype(np.int64)
        return found  # type: ignore[no-any-return]

    def ip_words(self, side: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        words = self.col(f"{side}_ip").view("<u8").reshape(-1, 2)
        return np.ascontiguousarray(words[:, 1]), np.ascontiguousarray(words[:, 0])


class _Context:
    """Group codes and label values of one ContextOptions over chosen rows."""

    def __init__(self, opts: ContextOptions, slots: SlotStrings) -> None:
        self.opts = opts
        self.slots = slots
        idents = opts.identifiers()
        self.sides = [
            side
            for side in ("src", "dst")
            if (opts.has_source if side == "src" else opts.has_destination)
            or any(lab.startswith("source_" if side == "src" else "destination_") for lab in opts.labels)
        ]
        self.ips = [
            side
            for side in self.sides
            if "ip" in idents or ("source_ip" if side == "src" else "destination_ip") in opts.labels
        ]

    def parts(self, b: _Batch, rows: I64) -> list[tuple[npt.NDArray[np.integer], int]]:
        out: list[tuple[npt.NDArray[np.integer], int]] = []
        for side in self.sides:
            slot = b.slot(side)[rows]
            out.append((slot, self.slots.size))
            if side in self.ips:
                lo, hi = b.ip_words(side)
                codes, radix = ip_codes(slot, self.slots.size, lo[rows], hi[rows])
                out.append((codes, radix))
        if self.opts.by_direction:
            out.append((b.direction()[rows], 3))
        return out

    def labels(self, b: _Batch, row: int) -> LabelValues:
        opts = self.opts
        rec = b.rec
        direction = _DIRECTIONS[int(b.direction()[row])]

        def side_value(side: str, what: str) -> str:
            if what == "ip":
                return _ip(rec[f"{side}_ip"][row])
            if what == "dns":
                return ""
            return self.slots.value(what, int(b.slot(side)[row]))

        out = []
        for label in opts.labels:
            if label == "traffic_direction":
                out.append(direction)
                continue
            side, _, field = label.partition("_")
            what = {"ip": "ip", "pod": "pod-name", "namespace": "namespace", "workload": "workload-name",
                    "app": "app"}[field]
            out.append(side_value("src" if side == "source" else "dst", what))
        for name, side, present in (("source", "src", opts.has_source), ("destination", "dst", opts.has_destination)):
            if not present:
                continue
            value = ""
            for ident in opts.chain(name, direction):
                value = side_value(side, ident)
                if value:
                    break
            out.append(value)
        return tuple(out)


def _merge(series: Series, labels: LabelValues, value: float) -> None:
    if value:
        series[labels] = series.get(labels, 0.0) + value


class HubbleAggregator:
    """Runs every enabled handler over a batch; ``process`` returns increments per family name."""

    def __init__(self, specs: Sequence[MetricSpec]) -> None:
        self.specs = list(specs)
        self._slots: SlotStrings | None = None
        self._contexts: dict[ContextOptions, _Context] = {}

    def _slot_strings(self, entries: Sequence[Mapping[str, Any]]) -> SlotStrings:
        slots = self._slots
        if slots is None or slots.entries is not entries:
            slots = self._slots = SlotStrings(entries)
            self._contexts = {}
        return slots

    def _context(self, opts: ContextOptions, slots: SlotStrings) -> _Context:
        found = self._contexts.get(opts)
        if found is None:
            found = self._contexts[opts] = _Context(opts, slots)
        return found

    def process(self, batch: FlowBatch) -> dict[str, Series]:
        out: dict[str, Series] = {}
        if len(batch) == 0:
            return out
        slots = self._slot_strings(batch.endpoints.entries)
        b = _Batch(batch, slots)
        for spec in self.specs:
            handler = _HANDLERS[spec.handler]
            handler(b, spec, self._context(spec.context, slots), out)
        return out


# -- handlers --------------------------------------------------------------------------------------------


def _grouped(
    b: _Batch, rows: I64, own: list[tuple[npt.NDArray[np.integer], int]], ctx: _Context
) -> tuple[Any, list[int]]:
    grouping = group_rows(int(rows.shape[0]), [*own, *ctx.parts(b, rows)])
    reps = rows[grouping.rep].tolist()
    return grouping, reps


def _flow(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    event = b.col("event")
    rows = np.flatnonzero((event >= Event.FLOW) & (event <= Event.DNS))
    if rows.shape[0] == 0:
        return
    own = [
        (event[rows], 8),
        (b.col("observation_point")[rows], 8),
        (b.col("proto")[rows], 256),
        (b.col("verdict")[rows], 4),
    ]
    grouping, reps = _grouped(b, rows, own, ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_flows_processed_total", {})
    rec = b.rec
    for rep, total in zip(reps, sums.tolist(), strict=True):
        ev = int(rec["event"][rep])
        proto = int(rec["proto"][rep])
        if ev == Event.DNS:
            head = ("DNS", "L7", "DNS", _VERDICT_DNS)
        else:
            protocol = _L4.get(proto, "Unknown L4")
            if ev == Event.DROP:
                head = (protocol, "Drop", "", "DROPPED")
            else:
                subtype = _SUBTYPE.get(ObservationPoint(int(rec["observation_point"][rep])), "")
                verdict = (
                    _VERDICT_RETRANSMISSION
                    if ev == Event.RETRANSMIT
                    else _VERDICTS.get(Verdict(int(rec["verdict"][rep])), "VERDICT_UNKNOWN")
                )
                head = (protocol, "Trace", subtype, verdict)
        _merge(series, (*head, *ctx.labels(b, rep)), total)


def _forwarded_flows(b: _Batch, extra: npt.NDArray[np.bool_] | None = None) -> I64:
    mask = (b.col("event") == Event.FLOW) & (b.col("verdict") == Verdict.FORWARDED)
    return np.flatnonzero(mask if extra is None else mask & extra)


def _tcp(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    rows = _forwarded_flows(b, b.col("proto") == 6)
    if rows.shape[0] == 0:
        return
    grouping, reps = _grouped(b, rows, [(b.col("ip_version")[rows] == 6, 2)], ctx)
    series = out.setdefault("hubble_tcp_flags_total", {})
    flags = b.rec["tcp_flags"]
    labels = [(_family(int(b.rec["ip_version"][rep])), ctx.labels(b, rep)) for rep in reps]
    for flag, name in _TCP_FLAGS:
        sums = grouping.sums(np.ascontiguousarray(flags[rows, flag]))
        for (family, context), total in zip(labels, sums.tolist(), strict=True):
            _merge(series, (name, family, *context), total)


def _drop(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    rows = np.flatnonzero(b.col("verdict") == Verdict.DROPPED)
    if rows.shape[0] == 0:
        return
    reasons = b.col("drop_reason")[rows]
    uniq, reason_codes = np.unique(reasons, return_inverse=True)
    own = [(reason_codes.reshape(-1), int(uniq.shape[0])), (b.col("proto")[rows], 256)]
    grouping, reps = _grouped(b, rows, own, ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_drop_total", {})
    for rep, total in zip(reps, sums.tolist(), strict=True):
        reason = STRINGS.name(int(b.rec["drop_reason"][rep])) or "DROP_REASON_UNKNOWN"
        protocol = _L4.get(int(b.rec["proto"][rep]), "Unknown L4")
        _merge(series, (*ctx.labels(b, rep), reason, protocol), total)


def _ips_returned(answers: object, count: int) -> int:
    if not isinstance(answers, (list, tuple)):
        return count
    n = 0
    for answer in answers:
        try:
            ipaddress.ip_address(str(answer))
        except ValueError:
            continue
        n += 1
    return n


def _dns(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    event = b.col("event")
    mask = event == Event.DNS
    if "ignoreaaaa" in spec.flags:
        mask &= b.col("dns_qtype") != _QTYPE_AAAA
    rows = np.flatnonzero(mask)
    if rows.shape[0] == 0:
        return
    from retina_otel.processors.flowmetrics.aggregate import qtype_name

    with_query = "query" in spec.flags
    extras: Sequence[Mapping[str, Any] | None] = b.batch.dns or ()
    ids: dict[tuple[bool, LabelValues], int] = {}
    codes = np.zeros(rows.shape[0], dtype=np.int64)
    rec = b.rec
    for i, row in enumerate(rows.tolist()):
        extra = extras[row] if row < len(extras) else None
        response = bool(rec["dns_is_response"][row])
        qtype = str((extra or {}).get("query_type") or "") or qtype_name(int(rec["dns_qtype"][row]))
        rcode = RCODE_NAMES.get(int(rec["dns_rcode"][row]), str(int(rec["dns_rcode"][row]))) if response else ""
        ips = _ips_returned((extra or {}).get("answers"), int(rec["dns_answer_count"][row])) if response else 0
        key: LabelValues = (rcode, qtype, str(ips))
        if with_query:
            query = str((extra or {}).get("query") or "")
            key = (*key, query if not query or query.endswith(".") else query + ".")
        codes[i] = ids.setdefault((response, key), len(ids))
    grouping, reps = _grouped(b, rows, [(codes, max(len(ids), 1))], ctx)
    sums = grouping.sums(b.col("packets")[rows])
    by_code = list(ids)
    group_codes = codes[grouping.rep].tolist()
    for rep, code, total in zip(reps, group_codes, sums.tolist(), strict=True):
        response, key = by_code[code]
        name = "hubble_dns_responses_total" if response else "hubble_dns_queries_total"
        _merge(out.setdefault(name, {}), (*ctx.labels(b, rep), *key), total)


def _icmp(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    proto = b.col("proto")
    event = b.col("event")
    rows = np.flatnonzero(((proto == 1) | (proto == 58)) & ((event == Event.FLOW) | (event == Event.DROP)))
    if rows.shape[0] == 0:
        return
    own = [(proto[rows] == 58, 2), (b.col("src_port")[rows] & 0xFF, 256), (b.col("dst_port")[rows] & 0xFF, 256)]
    grouping, reps = _grouped(b, rows, own, ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_icmp_total", {})
    rec = b.rec
    for rep, total in zip(reps, sums.tolist(), strict=True):
        v6 = int(rec["proto"][rep]) == 58
        kind = icmp_type_name(v6, int(rec["src_port"][rep]) & 0xFF, int(rec["dst_port"][rep]) & 0xFF)
        _merge(series, ("IPv6" if v6 else "IPv4", kind, *ctx.labels(b, rep)), total)


def _port_distribution(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    proto = b.col("proto")
    known = (proto == 6) | (proto == 17) | (proto == 132) | (proto == 1) | (proto == 58)
    rows = _forwarded_flows(b, known & (b.col("is_reply") == 0))
    if rows.shape[0] == 0:
        return
    ported = (proto[rows] == 6) | (proto[rows] == 17) | (proto[rows] == 132)
    port = np.where(ported, b.col("dst_port")[rows], 0)
    grouping, reps = _grouped(b, rows, [(proto[rows], 256), (port, 65536)], ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_port_distribution_total", {})
    rec = b.rec
    for rep, total in zip(reps, sums.tolist(), strict=True):
        p = int(rec["proto"][rep])
        port_text = str(int(rec["dst_port"][rep])) if p in (6, 17, 132) else "0"
        _merge(series, (_L4[p], port_text, *ctx.labels(b, rep)), total)


_HANDLERS: dict[str, Callable[[_Batch, MetricSpec, _Context, dict[str, Series]], None]] = {
    "flow": _flow,
    "tcp": _tcp,
    "drop": _drop,
    "dns": _dns,
    "icmp": _icmp,
    "port-distribution": _port_distribution,
}
