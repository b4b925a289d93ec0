"""Hubble's ``FlowFilter`` evaluated on buffered records as numpy masks.

A filter is compiled once per request into column tests; each test returns a boolean array over a
:class:`~retina_otel.exporters.observer.ring.RingView`, so filtering costs a few vector operations
per batch of records, not a Python call per record. Endpoint tests (pods, namespaces, labels,
services, workloads) are decided once per endpoint entry and spread to the rows by index. Only DNS
query patterns look at rows one by one, and only at DNS rows.

Semantics follow Hubble: within one field, any value may match; all fields set in a filter must
match; a record is returned when any whitelist filter matches (or there is none) and no blacklist
filter does. Filter fields of Hubble's FlowFilter that this agent has no data for (HTTP, FQDN,
identities, ...) are rejected with :class:`UnsupportedFilter` rather than silently ignored.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import unknown_fields

from retina_otel.exporters.observer import mapping
from retina_otel.exporters.observer.ring import RingView
from retina_otel.flows import STRINGS, EndpointTable, Event
from retina_otel.flowschema import (
    K8S_NAMESPACE,
    K8S_POD_LABEL_PREFIX,
    K8S_POD_NAME,
    K8S_SERVICE_NAME,
    K8S_WORKLOAD_KIND,
    K8S_WORKLOAD_NAME,
)
from retina_otel.hubble import flow_pb2, retina_pb2

__all__ = ["CompiledFilter", "UnsupportedFilter", "compile_filters", "select"]

Mask = npt.NDArray[np.bool_]
Test = Callable[[RingView], Mask]

_EVENT_NAMES = {"flow": Event.FLOW, "drop": Event.DROP, "retransmit": Event.RETRANSMIT, "dns": Event.DNS}
_L4_PROTOCOLS = {"tcp": (6,), "udp": (17,), "icmp": (1, 58), "icmpv4": (1,), "icmpv6": (58,), "sctp": (132,)}
_PORTED = (6, 17, 132)


class UnsupportedFilter(ValueError):
    """A filter asks for something this agent cannot evaluate (the message says which field)."""


# -- addresses ---------------------------------------------------------------------------------------------


def _halves(column: npt.NDArray[np.void]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    raw = np.ascontiguousarray(column).view(">u8").reshape(-1, 2)
    return raw[:, 0].astype(np.uint64), raw[:, 1].astype(np.uint64)


def _network(text: str) -> tuple[int, int, int, int]:
    """(high, low, high mask, low mask) of an address or CIDR in the 16-byte (v4-mapped) form."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise UnsupportedFilter(f"not an IP address or CIDR: {text!r}") from exc
    if net.version == 4:
        value = (0xFFFF << 32) | int(net.network_address)
        prefix = 96 + net.prefixlen
    else:
        value, prefix = int(net.network_address), net.prefixlen
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    return (value >> 64) & mask >> 64, value & mask & (2**64 - 1), mask >> 64, mask & (2**64 - 1)


_ATTRIBUTE = {
    "src_ip": "source.address",
    "dst_ip": "destination.address",
    "src_port": "source.port",
    "dst_port": "destination.port",
}


def _ip_test(column: str, values: Sequence[str]) -> Test:
    nets = [_network(v) for v in values]

    def test(view: RingView) -> Mask:
        hi, lo = _halves(view.records[column])
        out = np.zeros(len(view), dtype=bool)
        for nh, nl, mh, ml in nets:
            out |= ((hi & np.uint64(mh)) == np.uint64(nh)) & ((lo & np.uint64(ml)) == np.uint64(nl))
        out &= view.records["ip_version"] != 0  # a non-IP record has no address to match
        return out & ~view.hidden(_ATTRIBUTE[column])

    return test


# -- endpoints ---------------------------------------------------------------------------------------------


def _endpoint_test(side: str, predicate: Callable[[Mapping[str, Any]], bool]) -> Test:
    """Decide ``predicate`` once per endpoint entry of each table, then index by row. Tables do not change
    (a new cache generation is a new table), so a following call decides each table once, not per read."""
    decided_for: dict[int, tuple[EndpointTable, npt.NDArray[np.bool_]]] = {}

    def decide(table: EndpointTable) -> npt.NDArray[np.bool_]:
        known = decided_for.get(id(table))
        if known is not None and known[0] is table:
            return known[1]
        if len(decided_for) >= 16:
            decided_for.clear()
        decided = np.fromiter((predicate(e) for e in table.entries), dtype=bool, count=len(table.entries))
        decided_for[id(table)] = (table, decided)
        return decided

    def test(view: RingView) -> Mask:
        out = np.zeros(len(view), dtype=bool)
        index = view.records[f"{side}_endpoint"]
        for table_id in np.unique(view.table_ids).tolist():
            context = view.contexts.get(int(table_id))
            table = context.endpoints[side] if context is not None else None
            if table is None or not table.entries:
                continue
            decided = decide(table)
            rows = (view.table_ids == table_id) & (index >= 0) & (index < len(decided))
            out[rows] = decided[index[rows]]
        return out

    return test


def _name_pattern(value: str) -> Callable[[str, str], bool]:
    """Hubble's pod/service syntax: ``ns/prefix``, ``ns/`` (namespace only), ``prefix`` or ``/prefix``
    (any namespace)."""
    namespace, slash, prefix = value.partition("/")
    if not slash:
        namespace, prefix = "", value
    return lambda ns, name: (not namespace or ns == namespace) and name.startswith(prefix) and bool(name or ns)


def _named(key: str, values: Sequence[str]) -> Callable[[Mapping[str, Any]], bool]:
    patterns = [_name_pattern(v) for v in values]

    def predicate(entry: Mapping[str, Any]) -> bool:
        ns, name = str(entry.get(K8S_NAMESPACE) or ""), str(entry.get(key) or "")
        if not ns and not name:
            return False
        return any(p(ns, name) for p in patterns)

    return predicate


def _label_selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """The equality subset of Kubernetes label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``,
    comma-separated (all must hold). A ``k8s:`` source prefix on keys is accepted and ignored."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for raw in (part.strip() for part in text.split(",") if part.strip()):
        if " in " in raw or " notin " in raw:
            raise UnsupportedFilter(f"label selector {raw!r}: only =, ==, != and existence are supported")
        match = re.fullmatch(r"(!?)\s*([^=!\s]+)\s*(?:(==|=|!=)\s*(\S*))?", raw)
        if match is None:
            raise UnsupportedFilter(f"invalid label selector {raw!r}")
        negate, key, op, value = match.groups()
        checks.append(_label_check(K8S_POD_LABEL_PREFIX + key.removeprefix("k8s:"), op, value, bool(negate)))
    return lambda entry: all(check(entry) for check in checks)


def _label_check(key: str, op: str | None, value: str | None, negate: bool) -> Callable[[Mapping[str, Any]], bool]:
    if op is None:
        return lambda e: (key in e) != negate
    if op == "!=":
        return lambda e: e.get(key) != value
    return lambda e: e.get(key) == value


def _any_of(predicates: list[Callable[[Mapping[str, Any]], bool]]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda entry: any(p(entry) for p in predicates)


def _workloads(values: Iterable[flow_pb2.Workload]) -> Callable[[Mapping[str, Any]], bool]:
    wanted = [(w.name, w.kind) for w in values]

    def predicate(entry: Mapping[str, Any]) -> bool:
        name, kind = str(entry.get(K8S_WORKLOAD_NAME) or ""), str(entry.get(K8S_WORKLOAD_KIND) or "")
        return bool(name) and any((not n or n == name) and (not k or k.lower() == kind.lower()) for n, k in wanted)

    return predicate


# -- columns -----------------------------------------------------------------------------------------------


def _in_test(column: str, values: Iterable[int]) -> Test:
    wanted = np.asarray(sorted(set(values)))

    def test(view: RingView) -> Mask:
        return np.asarray(np.isin(view.records[column], wanted), dtype=bool)

    return test


def _port_test(column: str, values: Sequence[str]) -> Test:
    ranges = []
    for value in values:
        low, dash, high = value.strip().partition("-")
        try:
            ranges.append((int(low), int(high) if dash else int(low)))
        except ValueError as exc:
            raise UnsupportedFilter(f"not a port or port range: {value!r}") from exc

    def test(view: RingView) -> Mask:
        ports = view.records[column]
        out = np.zeros(len(view), dtype=bool)
        for low, high in ranges:
            out |= (ports >= low) & (ports <= high)
        return out & np.isin(view.records["proto"], _PORTED) & ~view.hidden(_ATTRIBUTE[column])

    return test


def _protocol_test(values: Sequence[str]) -> Test:
    numbers: list[int] = []
    dns = False
    for value in values:
        name = value.strip().lower()
        if name == "dns":
            dns = True
        elif name in _L4_PROTOCOLS:
            numbers.extend(_L4_PROTOCOLS[name])
        else:
            raise UnsupportedFilter(f"protocol {value!r}: supported are {', '.join([*_L4_PROTOCOLS, 'dns'])}")

    def test(view: RingView) -> Mask:
        out = np.isin(view.records["proto"], numbers)
        if dns:
            out |= view.records["event"] == Event.DNS
        return out

    return test


def _tcp_flags_test(values: Iterable[flow_pb2.TCPFlags]) -> Test:
    wanted = [[name for name in mapping.HUBBLE_TCP_FLAGS if getattr(flags, name)] for flags in values]

    def test(view: RingView) -> Mask:
        seen = mapping.tcp_flags_seen(view.records)
        out = np.zeros(len(view), dtype=bool)
        for names in wanted:
            if names:
                out |= np.logical_and.reduce([seen[name] for name in names])
        return np.asarray(out & (view.records["proto"] == 6), dtype=bool)

    return test


def _event_type_test(values: Iterable[flow_pb2.EventTypeFilter]) -> Test:
    wanted = [(f.type, f.sub_type if f.match_sub_type else None) for f in values]

    def test(view: RingView) -> Mask:
        types, subtypes = mapping.event_types(view.records, _descs(view))
        out = np.zeros(len(view), dtype=bool)
        for kind, sub in wanted:
            hit = types == kind
            if sub is not None:
                hit &= subtypes == sub
            out |= hit
        return out

    return test


def _dns_query_test(patterns: Sequence[str]) -> Test:
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise UnsupportedFilter(f"dns_query: invalid pattern: {exc}") from exc

    def test(view: RingView) -> Mask:
        out = np.zeros(len(view), dtype=bool)
        dns_rows = (view.records["event"] == Event.DNS) & ~view.hidden("dns.question.name")
        for i in np.flatnonzero(dns_rows).tolist():
            entry = view.dns[i]
            query = str(entry.get("query") or "") if entry is not None else ""
            out[i] = any(c.search(query) for c in compiled)
        return out

    return test


def _interface_test(values: Iterable[flow_pb2.NetworkInterface]) -> Test:
    wanted = [(i.index, i.name) for i in values]

    def test(view: RingView) -> Mask:
        ifindex = view.records["ifindex"]
        out = np.zeros(len(view), dtype=bool)
        for index, name in wanted:
            hit = np.ones(len(view), dtype=bool) if not index else ifindex == index
            if name:
                names = {int(i): mapping.interface_name(int(i)) for i in np.unique(ifindex).tolist()}
                hit &= np.fromiter((names[int(i)] == name for i in ifindex.tolist()), dtype=bool, count=len(view))
            out |= hit
        return out

    return test


def _descs(view: RingView) -> npt.NDArray[np.int32]:
    return mapping.drop_reason_descs(view.records, view.hidden("retina.drop.reason"))


def _drop_reason_desc_test(values: Iterable[int]) -> Test:
    wanted = sorted(set(values))

    def test(view: RingView) -> Mask:
        return np.asarray(np.isin(_descs(view), wanted) & (view.records["event"] == Event.DROP), dtype=bool)

    return test


def _drop_reason_test(values: Sequence[str]) -> Test:
    ids = [STRINGS.intern(v.strip().upper().removeprefix("SKB_DROP_REASON_")) for v in values]

    def test(view: RingView) -> Mask:
        column = view.records["drop_reason"]
        return np.asarray(np.isin(column, ids) & (column > 0) & ~view.hidden("retina.drop.reason"), dtype=bool)

    return test


def _event_test(values: Sequence[str]) -> Test:
    try:
        events = [_EVENT_NAMES[v.strip().lower()] for v in values]
    except KeyError as exc:
        raise UnsupportedFilter(f"event {exc.args[0]!r}: valid are {', '.join(_EVENT_NAMES)}") from exc
    return _in_test("event", (int(e) for e in events))


# -- compiling ---------------------------------------------------------------------------------------------


class CompiledFilter:
    """All tests of one FlowFilter (plus its retina-otel extension); matches when every test does."""

    def __init__(self, tests: list[Test], node_ok: bool = True) -> None:
        self._tests = tests
        self._node_ok = node_ok

    def __call__(self, view: RingView) -> Mask:
        out = np.full(len(view), self._node_ok, dtype=bool)
        for test in self._tests:
            if not out.any():
                break
            out &= test(view)
        return out


def _check_supported(flt: flow_pb2.FlowFilter) -> None:
    unknown = unknown_fields.UnknownFieldSet(flt)
    if len(unknown):
        numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
        raise UnsupportedFilter(
            f"FlowFilter field(s) {', '.join(map(str, numbers))} (see Hubble's flow.proto) are not supported by "
            "retina-otel: it has no HTTP, Kafka, FQDN, identity, cluster, UUID or trace data"
        )


def compile_filter(
    flt: flow_pb2.FlowFilter, extension: retina_pb2.FilterExtension | None, node_name: str
) -> CompiledFilter:
    _check_supported(flt)
    tests: list[Test] = []
    for side, prefix in (("src", "source"), ("dst", "destination")):
        ips = getattr(flt, f"{prefix}_ip")
        if ips:
            tests.append(_ip_test(f"{side}_ip", list(ips)))
        pods = getattr(flt, f"{prefix}_pod")
        if pods:
            tests.append(_endpoint_test(side, _named(K8S_POD_NAME, list(pods))))
        services = getattr(flt, f"{prefix}_service")
        if services:
            tests.append(_endpoint_test(side, _named(K8S_SERVICE_NAME, list(services))))
        labels = getattr(flt, f"{prefix}_label")
        if labels:
            selectors = [_label_selector(s) for s in labels]
            tests.append(_endpoint_test(side, _any_of(selectors)))
        workloads = getattr(flt, f"{prefix}_workload")
        if workloads:
            tests.append(_endpoint_test(side, _workloads(workloads)))
        ports = getattr(flt, f"{prefix}_port")
        if ports:
            tests.append(_port_test(f"{side}_port", list(ports)))
    if flt.traffic_direction:
        tests.append(_in_test("direction", flt.traffic_direction))
    if flt.verdict:
        tests.append(_in_test("verdict", flt.verdict))
    if flt.drop_reason_desc:
        tests.append(_drop_reason_desc_test(flt.drop_reason_desc))
    if flt.event_type:
        tests.append(_event_type_test(flt.event_type))
    if flt.protocol:
        tests.append(_protocol_test(list(flt.protocol)))
    if flt.reply:
        tests.append(_in_test("is_reply", (int(r) for r in flt.reply)))
    if flt.dns_query:
        tests.append(_dns_query_test(list(flt.dns_query)))
    if flt.tcp_flags:
        tests.append(_tcp_flags_test(flt.tcp_flags))
    if flt.ip_version:
        tests.append(_in_test("ip_version", (mapping.IP_VERSION_OF_HUBBLE.get(v, -1) for v in flt.ip_version)))
    if flt.interface:
        tests.append(_interface_test(flt.interface))
    if extension is not None:
        if extension.drop_reason:
            tests.append(_drop_reason_test(list(extension.drop_reason)))
        if extension.event:
            tests.append(_event_test(list(extension.event)))
    node_ok = not flt.node_name or any(fnmatch.fnmatchcase(node_name, p) for p in flt.node_name)
    return CompiledFilter(tests, node_ok)


def compile_filters(
    filters: Sequence[flow_pb2.FlowFilter], extensions: Sequence[retina_pb2.FilterExtension], node_name: str
) -> list[CompiledFilter]:
    """One compiled filter per position of ``filters`` or ``extensions`` (the longer one)."""
    out = []
    for i in range(max(len(filters), len(extensions))):
        flt = filters[i] if i < len(filters) else flow_pb2.FlowFilter()
        out.append(compile_filter(flt, extensions[i] if i < len(extensions) else None, node_name))
    return out


def select(view: RingView, whitelist: Sequence[CompiledFilter], blacklist: Sequence[CompiledFilter]) -> Mask:
    """Rows of ``view`` matched by any whitelist filter (all rows without one) and by no blacklist filter."""
    if whitelist:
        keep = np.zeros(len(view), dtype=bool)
        for flt in whitelist:
            keep |= flt(view)
    else:
        keep = np.ones(len(view), dtype=bool)
    for flt in blacklist:
        if keep.any():
            keep &= ~flt(view)
    return keep
