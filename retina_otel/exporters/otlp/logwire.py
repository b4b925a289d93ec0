"""A flow batch as the bytes of an OTLP ``ExportLogsServiceRequest``, column by column.

The same content as :func:`~retina_otel.exporters.otlp.convert.flows_to_log_records` encoded by the
SDK (same attributes as :func:`retina_otel.flowschema.record_attributes`, timestamps, severity, body,
event name, resource and scope), without an object per record: the encoded attribute of each distinct
value (an address, an enum name, an endpoint entry) is made once (endpoint entries and addresses once
across batches), integer attributes are encoded as varints in numpy, and every record is gathered from
those pieces at once (:func:`~retina_otel.exporters.otlp.wire.assemble`: one ``bytes.join``). Only DNS
rows' names and answers are looked up row by row (in a cache of encoded names). Attribute order within
a record differs from the SDK's (OTLP attributes are a set).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from retina_otel.exporters.otlp.wire import (
    INT64_MAX,
    Segments,
    assemble,
    constant,
    field_bytes,
    key_value,
    matrix,
    objects,
    table,
    varint,
    varint_matrix,
)
from retina_otel.flows import (
    STRINGS,
    Direction,
    EndpointTable,
    Event,
    FieldMask,
    FlowBatch,
    ObservationPoint,
    TcpFlag,
    Verdict,
    bytes_to_ip,
)
from retina_otel.flowschema import SIDE_PREFIX

__all__ = ["Builder", "encode_flow_logs", "flow_attributes", "resource_bytes", "scope_bytes"]

_TRANSPORT = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp", 132: "sctp"}
_IO_DIRECTION = {1: "receive", 2: "transmit"}
_SEVERITY = b"\x10\x09" + field_bytes(3, b"INFO")  # severity_number INFO (9), severity_text "INFO"


def resource_bytes(resource: Resource) -> bytes:
    """``Resource`` message of an SDK resource (its attributes, in order)."""
    return b"".join(field_bytes(1, kv) for k, v in resource.attributes.items() if (kv := key_value(k, v)) is not None)


def scope_bytes(scope: InstrumentationScope) -> bytes:
    out = field_bytes(1, scope.name.encode())
    if scope.version:
        out += field_bytes(2, scope.version.encode())
    for key, value in (scope.attributes or {}).items():
        out += field_bytes(3, key_value(key, value) or b"")
    return out


def _kv_field(key: str, value: Any, number: int = 6) -> bytes:
    """An ``attributes`` entry (field ``number``: 6 in a log record); b"" where the SDK would drop it."""
    kv = key_value(key, value)
    return b"" if kv is None else field_bytes(number, kv)


def _enum_name(enum: type[Direction] | type[ObservationPoint] | type[Verdict], code: int) -> str:
    try:
        return enum(code).name.lower()
    except ValueError:
        return str(code)


def _event_name(code: int) -> str:
    if not code:
        return "retina.flow"
    try:
        return f"retina.flow.{Event(code).name.lower()}"
    except ValueError:
        return f"retina.flow.{code}"


class Builder:
    """The columns of one batch's records, in the order they are written."""

    def __init__(
        self, n: int, masks: tuple[FieldMask, ...] = (), number: int = 6, exclude: frozenset[str] = frozenset()
    ) -> None:
        """``n`` rows; attributes go into field ``number`` of the row's message (6: LogRecord, 9: Span,
        3: Span.Event); keys in ``exclude`` or refused by ``masks`` are left out."""
        self.n = n
        self.masks = masks
        self.number = number
        self.tag = number << 3 | 2
        self.exclude = exclude
        self.columns: list[Segments] = []
        self._allowed: dict[str, bool] = {k: False for k in exclude}

    def allowed(self, key: str) -> bool:
        found = self._allowed.get(key)
        if found is None:
            found = self._allowed[key] = all(m.allows(key) for m in self.masks)
        return found

    def attr(self, key: str, value: Any) -> bytes:
        return _kv_field(key, value, self.number) if self.allowed(key) else b""

    def categorical(self, values: npt.NDArray[Any], make: Callable[[Any], bytes]) -> None:
        """One fragment per distinct value of ``values`` (``make(value)``, b"" for none)."""
        uniq, inverse = np.unique(values, return_inverse=True)
        fragments = [make(u) for u in uniq.tolist()]
        if any(fragments):
            self.columns.append(table(fragments, inverse.reshape(-1)))

    def integer(self, key: str, values: npt.NDArray[Any], present: npt.NDArray[np.bool_] | None = None) -> None:
        """An int attribute per row where ``present`` (and the value fits int64, as the SDK requires)."""
        if not self.allowed(key):
            return
        v = values.astype(np.uint64)
        keep = v <= np.uint64(INT64_MAX)
        if present is not None:
            keep &= present
        if not keep.any():
            return
        encoded_key = key.encode()
        assert len(encoded_key) < 100
        digits, vlen = varint_matrix(v)
        head = bytes([self.tag, 0, 0x0A, len(encoded_key)]) + encoded_key + b"\x12\x00\x18"
        rows = np.empty((self.n, len(head) + 10), np.uint8)
        rows[:, : len(head)] = np.frombuffer(head, np.uint8)
        rows[:, len(head) :] = digits
        anylen = 1 + vlen
        rows[:, len(head) - 2] = anylen
        rows[:, 1] = 2 + len(encoded_key) + 2 + anylen
        self.columns.append(matrix(rows, np.where(keep, len(head) + vlen, 0)))

    def fixed64(self, tag: int, values: npt.NDArray[Any], omit_zero: bool = False) -> None:
        rows = np.empty((self.n, 9), np.uint8)
        rows[:, 0] = tag
        rows[:, 1:] = np.ascontiguousarray(values, dtype="<u8").view(np.uint8).reshape(self.n, 8)
        lens = np.where(values != 0, 9, 0) if omit_zero else np.full(self.n, 9, np.int64)
        self.columns.append(matrix(rows, lens))


# Encoded address attributes, across batches (the same pods talk again), per (key, field number): the
# known addresses sorted (numpy looks a batch's addresses up at once), their encoded attributes and
# lengths. Replaced whole on a miss (a reader keeps a consistent snapshot); emptied past the maximum.
_ADDRESS_CACHE: dict[tuple[str, int], tuple[npt.NDArray[Any], npt.NDArray[np.object_], npt.NDArray[np.int64]]] = {}
_ADDRESS_CACHE_MAX = 16_384  # per key: ~1 MB


def _addresses(b: Builder, key: str, column: npt.NDArray[Any]) -> None:
    if not b.allowed(key):
        return
    raw = np.ascontiguousarray(column)
    uniq, first, inverse = np.unique(raw.view("S16"), return_index=True, return_inverse=True)
    empty = (np.empty(0, "S16"), np.empty(0, object), np.empty(0, np.int64))
    known, parts, lens = _ADDRESS_CACHE.get((key, b.number)) or empty
    pos = np.searchsorted(known, uniq)
    hit = pos < known.shape[0]
    hit[hit] = known[pos[hit]] == uniq[hit]
    if not hit.all():
        if known.shape[0] + int((~hit).sum()) > _ADDRESS_CACHE_MAX:
            known, parts, lens = known[:0], parts[:0], lens[:0]
            hit[:] = False
        new = [_kv_field(key, str(bytes_to_ip(raw[i])), b.number) for i in first[~hit].tolist()]
        known = np.concatenate([known, uniq[~hit]])
        parts = np.concatenate([parts, objects(new)])
        lens = np.concatenate([lens, np.fromiter(map(len, new), np.int64, len(new))])
        order = np.argsort(known, kind="stable")
        known, parts, lens = known[order], parts[order], lens[order]
        _ADDRESS_CACHE[(key, b.number)] = (known, parts, lens)
        pos = np.searchsorted(known, uniq)
    rows = pos[inverse.reshape(-1)]
    b.columns.append(Segments(parts[rows], lens[rows]))


def _network(b: Builder, r: npt.NDArray[Any]) -> None:
    """The small enumerations of a row, as one column over their combinations."""
    code = (
        r["proto"].astype(np.int64)
        | (r["ip_version"] == 6).astype(np.int64) << 8
        | r["direction"].astype(np.int64) << 9
        | r["observation_point"].astype(np.int64) << 17
        | r["verdict"].astype(np.int64) << 25
        | (r["is_reply"] != 0).astype(np.int64) << 33
    )

    def make(c: int) -> bytes:
        proto, direction = c & 0xFF, c >> 9 & 0xFF
        return b"".join(
            (
                b.attr("network.transport", _TRANSPORT.get(proto, str(proto))),
                b.attr("network.type", "ipv6" if c >> 8 & 1 else "ipv4"),
                b.attr("network.io.direction", _IO_DIRECTION.get(direction, "unknown")),
                b.attr("retina.flow.direction", _enum_name(Direction, direction)),
                b.attr("retina.flow.observation_point", _enum_name(ObservationPoint, c >> 17 & 0xFF)),
                b.attr("retina.flow.verdict", _enum_name(Verdict, c >> 25 & 0xFF)),
                b.attr("retina.flow.is_reply", bool(c >> 33 & 1)),
            )
        )

    b.categorical(code, make)


# Encoded DNS names and answers, across batches (the same names are asked again and again); cleared
# when it grows too big.
_DNS_CACHE: dict[tuple[int, str, Any], bytes] = {}
_DNS_CACHE_MAX = 16_384


def _dns_attr(b: Builder, key: str, value: Any) -> bytes:
    if not b.allowed(key):
        return b""
    cache_key = (b.number, key, tuple(value) if isinstance(value, list) else value)
    found = _DNS_CACHE.get(cache_key)
    if found is None:
        if len(_DNS_CACHE) >= _DNS_CACHE_MAX:
            _DNS_CACHE.clear()
        found = _DNS_CACHE[cache_key] = _kv_field(key, value, b.number)
    return found


def _dns_extras(b: Builder, batch: FlowBatch, is_dns: npt.NDArray[np.bool_]) -> None:
    """Names and answers of DNS rows: the only attributes looked at row by row."""
    if batch.dns is None:
        return
    fragments = [b""]
    codes = np.zeros(b.n, np.intp)
    for i in np.flatnonzero(is_dns).tolist():
        extra = batch.dns[i]
        if extra is None:
            continue
        parts = []
        if extra.get("query") is not None:
            parts.append(_dns_attr(b, "dns.question.name", extra["query"]))
        if extra.get("answers"):
            parts.append(_dns_attr(b, "dns.answers", list(extra["answers"])))
        if extra.get("query_type"):
            parts.append(_dns_attr(b, "dns.question.type_name", extra["query_type"]))
        if extra.get("return_code"):
            parts.append(_dns_attr(b, "dns.response_code_name", extra["return_code"]))
        codes[i] = len(fragments)
        fragments.append(b"".join(parts))
    if len(fragments) > 1:
        b.columns.append(table(fragments, codes))


# Encoded endpoint entries, per (table, side, masks): an EndpointTable is shared by the batches of one
# cache generation, so each entry is encoded once per generation, not once per batch. The last few
# tables are kept (with a reference, so their ids stay theirs).
_ENDPOINT_CACHE: dict[
    tuple[int, str, tuple[FieldMask, ...], int, frozenset[str]], tuple[EndpointTable, list[bytes | None]]
] = {}
_ENDPOINT_TABLES_KEPT = 4


def _endpoint_fragments(b: Builder, table: EndpointTable, prefix: str) -> list[bytes | None]:
    key = (id(table), prefix, b.masks, b.number, b.exclude)
    found = _ENDPOINT_CACHE.get(key)
    if found is None or found[0] is not table:
        while len(_ENDPOINT_CACHE) >= _ENDPOINT_TABLES_KEPT:
            _ENDPOINT_CACHE.pop(next(iter(_ENDPOINT_CACHE)), None)
        found = _ENDPOINT_CACHE[key] = (table, [None] * len(table.entries))
    return found[1]


def _endpoint(b: Builder, table: EndpointTable, prefix: str, index: npt.NDArray[Any]) -> None:
    entries = table.entries
    valid = (index >= 0) & (index < len(entries))
    if not valid.any():
        return
    cache = _endpoint_fragments(b, table, prefix)

    def make(i: int) -> bytes:
        if i < 0:
            return b""
        fragment = cache[i]
        if fragment is None:
            items = entries[i].items()
            fragment = cache[i] = b"".join(b.attr(prefix + k, v) for k, v in items if v is not None and v != "")
        return fragment

    b.categorical(np.where(valid, index, -1), make)


def _record_columns(batch: FlowBatch, now: int) -> list[Segments]:
    r = batch.records
    b = Builder(len(batch), batch.masks)
    end = r["time_end_ns"].astype(np.uint64)
    b.fixed64(0x09, np.where(end != 0, end, np.uint64(now)))  # time_unix_nano
    b.columns.append(constant(_SEVERITY + b"\x59" + int(now).to_bytes(8, "little"), b.n))  # + observed time
    b.categorical(r["event"], lambda c: field_bytes(5, field_bytes(1, _event_name(c).encode())))  # body
    flow_attributes(b, batch)
    b.categorical(r["event"], lambda c: field_bytes(12, _event_name(c).encode()))  # event_name
    return b.columns


def flow_attributes(b: Builder, batch: FlowBatch) -> None:
    """Columns of every flow-record attribute of :func:`retina_otel.flowschema.record_attributes` (those
    ``b`` allows) for the rows of ``batch``."""
    from retina_otel.ifnames import INTERFACES

    r = batch.records
    _addresses(b, "source.address", r["src_ip"])
    _addresses(b, "destination.address", r["dst_ip"])
    _network(b, r)
    for key, column in (
        ("retina.flow.packets", "packets"),
        ("retina.flow.bytes", "bytes"),
        ("retina.flow.reply_packets", "reply_packets"),
        ("retina.flow.reply_bytes", "reply_bytes"),
        ("retina.flow.start_time_unix_nano", "time_start_ns"),
        ("retina.flow.end_time_unix_nano", "time_end_ns"),
    ):
        b.integer(key, r[column])
    proto = r["proto"]
    icmp = (proto == 1) | (proto == 58)
    b.integer("retina.icmp.type", r["src_port"], icmp)
    b.integer("retina.icmp.code", r["dst_port"], icmp)
    b.integer("source.port", r["src_port"], ~icmp)
    b.integer("destination.port", r["dst_port"], ~icmp)
    ifindex = r["ifindex"]
    b.integer("network.interface.index", ifindex, ifindex != 0)
    if b.allowed("network.interface.name") and ifindex.any():
        uniq, inverse = np.unique(ifindex, return_inverse=True)
        names = INTERFACES.names(uniq).tolist()
        fragments = [
            b.attr("network.interface.name", name) if idx and name else b""
            for idx, name in zip(uniq.tolist(), names, strict=True)
        ]
        b.columns.append(table(fragments, inverse.reshape(-1)))
    tcp = proto == 6
    if tcp.any():
        flags = r["tcp_flags"]
        for flag in TcpFlag:
            counts = flags[:, flag.value]
            b.integer(f"retina.tcp.flags.{flag.name.lower()}", counts, tcp & (counts != 0))
    b.categorical(r["drop_reason"], lambda c: b.attr("retina.drop.reason", STRINGS.name(c)) if c else b"")
    for key, column in (
        ("retina.tcp.retransmits", "retransmits"),
        ("retina.tcp.srtt_us", "srtt_us"),
        ("retina.tcp.handshake_us", "handshake_us"),
    ):
        b.integer(key, r[column], r[column] != 0)
    is_dns = r["event"] == Event.DNS
    if is_dns.any():
        for key, column in (
            ("dns.id", "dns_id"),
            ("dns.question.type", "dns_qtype"),
            ("dns.response_code", "dns_rcode"),
        ):
            b.integer(key, r[column], is_dns)
        b.categorical(
            np.where(is_dns, 1 + (r["dns_is_response"] != 0), 0),
            lambda c: b.attr("dns.is_response", c == 2) if c else b"",
        )
        b.integer("dns.answer_count", r["dns_answer_count"], is_dns)
        b.integer("dns.latency_us", r["dns_latency_us"], is_dns & (r["dns_latency_us"] != 0))
        _dns_extras(b, batch, is_dns)
    for side in ("src", "dst"):
        _endpoint(b, batch.endpoints, SIDE_PREFIX[side], r[f"{side}_endpoint"])


def encode_flow_logs(
    batch: FlowBatch,
    resource: Resource,
    scope: InstrumentationScope,
    extra_resource: Mapping[str, str] | None = None,
    now: int | None = None,
) -> bytes:
    """The serialized ``ExportLogsServiceRequest`` of one batch: one resource (``resource`` plus the
    batch's attributes and ``extra_resource``), one scope, one log record per row. ``now``: the observed
    timestamp (and the timestamp of rows without an end time); default the current time."""
    n = len(batch)
    if not n:
        return b""
    if batch.attributes or extra_resource:
        resource = resource.merge(Resource({**batch.attributes, **(extra_resource or {})}))
    columns = _record_columns(batch, time.time_ns() if now is None else now)
    content = np.sum([c.lens for c in columns], axis=0)
    digits, vlen = varint_matrix(content.astype(np.uint64))
    head = np.empty((n, 11), np.uint8)
    head[:, 0] = 0x12  # ScopeLogs.log_records
    head[:, 1:] = digits
    records = [matrix(head, 1 + vlen), *columns]
    records_size = int(content.sum() + (1 + vlen).sum())
    # The enclosing messages' headers need only the sizes: everything is joined once, at the end.
    scope_head = field_bytes(1, scope_bytes(scope))
    scope_tail = field_bytes(3, scope.schema_url.encode()) if scope.schema_url else b""
    scope_size = len(scope_head) + records_size + len(scope_tail)
    resource_head = field_bytes(1, resource_bytes(resource)) + b"\x12" + varint(scope_size)
    resource_tail = field_bytes(3, resource.schema_url.encode()) if resource.schema_url else b""
    resource_size = len(resource_head) + scope_size + len(resource_tail)
    prefix = b"\x0a" + varint(resource_size) + resource_head + scope_head
    return assemble(records, prefix=prefix, suffix=scope_tail + resource_tail)
