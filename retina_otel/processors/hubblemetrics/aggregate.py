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

from retina_otel.dnsnames import hubble_rcode_text, type_name
from retina_otel.flows import STRINGS, Event, FlowBatch, ObservationPoint, TcpFlag, Verdict
from retina_otel.processors.flowmetrics.grouping import Grouping, group_rows
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
_SUBTYPE: dict[int, str] = {
    ObservationPoint.FROM_ENDPOINT: "to-stack",
    ObservationPoint.TO_ENDPOINT: "to-endpoint",
    ObservationPoint.FROM_NETWORK: "from-network",
    ObservationPoint.TO_NETWORK: "to-network",
}
# Retina's own verdict numbers for DNS and retransmission flows, which Hubble prints as numbers.
_VERDICT_DNS, _VERDICT_RETRANSMISSION = "16", "15"
_VERDICTS: dict[int, str] = {Verdict.FORWARDED: "FORWARDED", Verdict.DROPPED: "DROPPED"}
_L4 = {6: "TCP", 17: "UDP", 1: "ICMPv4", 58: "ICMPv6", 132: "SCTP"}
_DIRECTIONS = ("unknown", "ingress", "egress")
_TCP_FLAGS = ((TcpFlag.FIN, "FIN"), (TcpFlag.SYN, "SYN"), (TcpFlag.SYNACK, "SYN-ACK"), (TcpFlag.RST, "RST"))
_QTYPE_AAAA = 28


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


@dataclass
class _Column:
    """One context label over the chosen rows: a code per row for each distinct value; codes from
    ``len(strings)`` on stand for addresses, rendered from the group's row."""

    codes: I64
    radix: int
    strings: list[str]
    ip_side: str = ""


def _ip_codes(b: _Batch, side: str, rows: I64) -> tuple[I64, int]:
    """Exact codes of the addresses of ``rows`` (one 64-bit sort when they are all IPv4)."""
    lo, hi = b.ip_words(side)
    lo, hi = lo[rows], hi[rows]
    if hi.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), 1
    if (hi == hi[0]).all():
        uniq, inverse = np.unique(lo, return_inverse=True)
        count = int(uniq.shape[0])
    else:
        pairs, inverse = np.unique(np.stack([hi, lo], axis=1), axis=0, return_inverse=True)
        count = int(pairs.shape[0])
    return inverse.reshape(-1).astype(np.int64), count


class _Context:
    """Context label codes of one ContextOptions over chosen rows, vectorised: each label's code is its
    value (per-slot tables built once per endpoint-table generation, addresses only where a chain reaches
    ``ip``), so grouping by them gives one group per series."""

    _FIELDS = {"pod": "pod-name", "namespace": "namespace", "workload": "workload-name", "app": "app"}

    def __init__(self, opts: ContextOptions, slots: SlotStrings) -> None:
        self.opts = opts
        self.slots = slots
        self._tables: dict[object, tuple[I64, list[str]]] = {}

    def _table(self, key: object, per_direction: list[list[str | None]]) -> tuple[I64, list[str]]:
        """(direction x slot) value ids (-1: the row's address) and the values, cached per generation."""
        found = self._tables.get(key)
        if found is None:
            ids: dict[str, int] = {}
            table = np.array(
                [[-1 if v is None else ids.setdefault(v, len(ids)) for v in values] for values in per_direction],
                dtype=np.int64,
            )
            found = self._tables[key] = (table, list(ids))
        return found

    def _side(self, b: _Batch, rows: I64, side: str, direction: I64 | None, chains: list[tuple[str, ...]]) -> _Column:
        table, strings = self._table(tuple(chains), [self.slots.chain_values(c) for c in chains])
        slot = b.slot(side)[rows]
        codes = table[direction if direction is not None else 0, slot]
        need_ip = codes < 0
        if not need_ip.any():
            return _Column(codes, max(len(strings), 1), strings)
        ip, count = _ip_codes(b, side, rows[need_ip])
        codes = codes.copy()
        codes[need_ip] = len(strings) + ip
        return _Column(codes, len(strings) + count, strings, side)

    def columns(self, b: _Batch, rows: I64) -> list[_Column]:
        opts = self.opts
        direction = b.direction()[rows] if opts.by_direction else None
        out: list[_Column] = []
        for label in opts.labels:
            if label == "traffic_direction":
                assert direction is not None
                out.append(_Column(direction, 3, list(_DIRECTIONS)))
                continue
            prefix, _, field = label.partition("_")
            side = "src" if prefix == "source" else "dst"
            if field == "ip":
                ip, count = _ip_codes(b, side, rows)
                out.append(_Column(ip, count, [], side))
            else:
                out.append(self._side(b, rows, side, None, [(self._FIELDS[field],)]))
        for name, side, present in (("source", "src", opts.has_source), ("destination", "dst", opts.has_destination)):
            if present:
                chains = [opts.chain(name, d) for d in _DIRECTIONS] if opts.by_direction else [opts.chain(name, "")]
                out.append(self._side(b, rows, side, direction, chains))
        return out


def _render(b: _Batch, columns: list[_Column], index: I64, reps: list[int]) -> list[LabelValues]:
    """The context labels of each group, from its representative (``rows[index[g]] == reps[g]``)."""
    per_column: list[list[str]] = []
    for column in columns:
        codes = column.codes[index].tolist()
        strings = column.strings
        if column.ip_side:
            addresses = b.rec[f"{column.ip_side}_ip"]
            n = len(strings)
            per_column.append([strings[c] if c < n else _ip(addresses[r]) for c, r in zip(codes, reps, strict=True)])
        else:
            per_column.append([strings[c] for c in codes])
    return list(zip(*per_column, strict=True)) if per_column else [() for _ in reps]


def _merge(series: Series, labels: LabelValues, value: float) -> None:
    if value:
        series[labels] = series.get(labels, 0.0) + value


class HubbleAggregator:
    """Runs every enabled handler over a batch; ``process`` returns increments per family name."""

    def __init__(self, specs: Sequence[MetricSpec]) -> None:
        self.specs = list(specs)
        self._slots: SlotStrings | None = None
        self._contexts: dict[ContextOptions, _Context] = {}

    def pod_values(self, names: set[str]) -> set[str]:
        """``namespace/pod`` of the named pods in the endpoint table of the last batch."""
        return self._slots.pod_values(names) if self._slots is not None else set()

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
) -> tuple[Grouping, list[int], list[LabelValues]]:
    """Groups of ``rows`` by the handler's codes and the context labels: a representative row and the
    context label values of each group."""
    columns = ctx.columns(b, rows)
    grouping = group_rows(int(rows.shape[0]), [*own, *((c.codes, c.radix) for c in columns)])
    reps = rows[grouping.rep].tolist()
    return grouping, reps, _render(b, columns, grouping.rep, reps)


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
    grouping, reps, contexts = _grouped(b, rows, own, ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_flows_processed_total", {})
    rec = b.rec
    heads: dict[tuple[int, int, int, int], tuple[str, str, str, str]] = {}
    rep_rows = np.asarray(reps, dtype=np.int64)
    keys = zip(
        rec["event"][rep_rows].tolist(),
        rec["observation_point"][rep_rows].tolist(),
        rec["proto"][rep_rows].tolist(),
        rec["verdict"][rep_rows].tolist(),
        strict=True,
    )
    for key, context, total in zip(keys, contexts, sums.tolist(), strict=True):
        head = heads.get(key)
        if head is None:
            head = heads[key] = _flow_head(*key)
        _merge(series, (*head, *context), total)


def _flow_head(ev: int, obs: int, proto: int, verdict: int) -> tuple[str, str, str, str]:
    """protocol, type, subtype, verdict of flow records with these columns."""
    if ev == Event.DNS:
        return ("DNS", "L7", "DNS", _VERDICT_DNS)
    protocol = _L4.get(proto, "Unknown L4")
    if ev == Event.DROP:
        return (protocol, "Drop", "", "DROPPED")
    if ev == Event.RETRANSMIT:
        return (protocol, "Trace", _SUBTYPE.get(obs, ""), _VERDICT_RETRANSMISSION)
    return (protocol, "Trace", _SUBTYPE.get(obs, ""), _VERDICTS.get(verdict, "VERDICT_UNKNOWN"))


def _forwarded_flows(b: _Batch, extra: npt.NDArray[np.bool_] | None = None) -> I64:
    mask = (b.col("event") == Event.FLOW) & (b.col("verdict") == Verdict.FORWARDED)
    return np.flatnonzero(mask if extra is None else mask & extra)


def _tcp(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    rows = _forwarded_flows(b, b.col("proto") == 6)
    if rows.shape[0] == 0:
        return
    grouping, reps, contexts = _grouped(b, rows, [(b.col("ip_version")[rows] == 6, 2)], ctx)
    series = out.setdefault("hubble_tcp_flags_total", {})
    flags = b.rec["tcp_flags"]
    versions = b.rec["ip_version"][np.asarray(reps, dtype=np.int64)].tolist()
    labels = [(_family(v), context) for v, context in zip(versions, contexts, strict=True)]
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
    grouping, reps, contexts = _grouped(b, rows, own, ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_drop_total", {})
    for rep, context, total in zip(reps, contexts, sums.tolist(), strict=True):
        reason = STRINGS.name(int(b.rec["drop_reason"][rep])) or "DROP_REASON_UNKNOWN"
        protocol = _L4.get(int(b.rec["proto"][rep]), "Unknown L4")
        _merge(series, (*context, reason, protocol), total)


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
    with_query = "query" in spec.flags
    extras: Sequence[Mapping[str, Any] | None] = b.batch.dns or ()
    ids: dict[tuple[bool, LabelValues], int] = {}
    codes = np.zeros(rows.shape[0], dtype=np.int64)
    rec = b.rec
    for i, row in enumerate(rows.tolist()):
        extra = extras[row] if row < len(extras) else None
        response = bool(rec["dns_is_response"][row])
        qtype = str((extra or {}).get("query_type") or "") or type_name(int(rec["dns_qtype"][row]))
        rcode = hubble_rcode_text(int(rec["dns_rcode"][row])) if response else ""
        ips = _ips_returned((extra or {}).get("answers"), int(rec["dns_answer_count"][row])) if response else 0
        key: LabelValues = (rcode, qtype, str(ips))
        if with_query:
            query = str((extra or {}).get("query") or "")
            key = (*key, query if not query or query.endswith(".") else query + ".")
        codes[i] = ids.setdefault((response, key), len(ids))
    grouping, _reps, contexts = _grouped(b, rows, [(codes, max(len(ids), 1))], ctx)
    sums = grouping.sums(b.col("packets")[rows])
    by_code = list(ids)
    group_codes = codes[grouping.rep].tolist()
    for context, code, total in zip(contexts, group_codes, sums.tolist(), strict=True):
        response, key = by_code[code]
        name = "hubble_dns_responses_total" if response else "hubble_dns_queries_total"
        _merge(out.setdefault(name, {}), (*context, *key), total)


def _icmp(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    proto = b.col("proto")
    event = b.col("event")
    rows = np.flatnonzero(((proto == 1) | (proto == 58)) & ((event == Event.FLOW) | (event == Event.DROP)))
    if rows.shape[0] == 0:
        return
    own = [(proto[rows] == 58, 2), (b.col("src_port")[rows] & 0xFF, 256), (b.col("dst_port")[rows] & 0xFF, 256)]
    grouping, reps, contexts = _grouped(b, rows, own, ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_icmp_total", {})
    rec = b.rec
    for rep, context, total in zip(reps, contexts, sums.tolist(), strict=True):
        v6 = int(rec["proto"][rep]) == 58
        kind = icmp_type_name(v6, int(rec["src_port"][rep]) & 0xFF, int(rec["dst_port"][rep]) & 0xFF)
        _merge(series, ("IPv6" if v6 else "IPv4", kind, *context), total)


def _port_distribution(b: _Batch, spec: MetricSpec, ctx: _Context, out: dict[str, Series]) -> None:
    proto = b.col("proto")
    known = (proto == 6) | (proto == 17) | (proto == 132) | (proto == 1) | (proto == 58)
    rows = _forwarded_flows(b, known & (b.col("is_reply") == 0))
    if rows.shape[0] == 0:
        return
    ported = (proto[rows] == 6) | (proto[rows] == 17) | (proto[rows] == 132)
    port = np.where(ported, b.col("dst_port")[rows], 0)
    grouping, reps, contexts = _grouped(b, rows, [(proto[rows], 256), (port, 65536)], ctx)
    sums = grouping.sums(b.col("packets")[rows])
    series = out.setdefault("hubble_port_distribution_total", {})
    rep_rows = np.asarray(reps, dtype=np.int64)
    protos, ports = b.rec["proto"][rep_rows].tolist(), b.rec["dst_port"][rep_rows].tolist()
    for p, dport, context, total in zip(protos, ports, contexts, sums.tolist(), strict=True):
        _merge(series, (_L4[p], str(dport) if p in (6, 17, 132) else "0", *context), total)


_HANDLERS: dict[str, Callable[[_Batch, MetricSpec, _Context, dict[str, Series]], None]] = {
    "flow": _flow,
    "tcp": _tcp,
    "drop": _drop,
    "dns": _dns,
    "icmp": _icmp,
    "port-distribution": _port_distribution,
}
