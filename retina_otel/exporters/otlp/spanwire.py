"""A span batch as the bytes of an OTLP ``ExportTraceServiceRequest``, column by column.

The same content as :func:`~retina_otel.exporters.otlp.traces.spans_to_readable` encoded by the SDK
(the names, attributes, events, status texts and resources of :func:`retina_otel.traces.schema.span_views`):
one ``ResourceSpans`` per distinct observing endpoint (the batch's resource plus the endpoint's
metadata), the ``retina-otel`` scope, and per span its ids, name, kind, times, attributes, events,
status, dropped-event count and flags (``SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE``, plus ``IS_REMOTE`` when it
has a parent, as the SDK writes them). Attributes are the flow records' columns
(:func:`~retina_otel.exporters.otlp.logwire.flow_attributes`) written into ``Span.attributes``; events
are encoded as columns of their own array. Only span names and the status texts of failed spans are
made row by row (short strings).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from retina_otel.exporters.otlp.logwire import Builder, flow_attributes, scope_bytes
from retina_otel.exporters.otlp.wire import (
    Segments,
    assemble,
    field_bytes,
    key_value,
    matrix,
    table,
    varint,
    varint_matrix,
)
from retina_otel.flows import STRINGS, Event, bytes_to_ip
from retina_otel.traces.schema import (
    _CLOSE,
    _DROPPED_FROM_FLOW,
    _FLAGS,
    _RESOURCE_KEYS,
    _name,
    _resource,
    _status_message,
)
from retina_otel.traces.spans import CloseReason, EventKind, SpanBatch, SpanKind, StatusCode

__all__ = ["encode_spans"]

_TRANSPORT = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp", 132: "sctp"}
_SIDE_NAME_KEYS = ("k8s.service.name", "k8s.pod.name", "k8s.node.name")
_FLAGS_TAG = varint(16 << 3 | 5)  # Span.flags, fixed32
_EVENT_NAMES = {EventKind.DROP: "retina.drop", EventKind.RETRANSMIT: "retina.tcp.retransmit"}

# Encoded resources (the exporter's plus an endpoint's metadata), across batches; cleared when too big.
_RESOURCES: dict[tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, str], ...]], bytes] = {}
_RESOURCES_MAX = 16_384


def _ip_strings(column: npt.NDArray[Any]) -> list[str]:
    raw = np.ascontiguousarray(column)
    _, first, inverse = np.unique(raw.view("S16"), return_index=True, return_inverse=True)
    text = [str(bytes_to_ip(raw[i])) for i in first.tolist()]
    return [text[j] for j in inverse.reshape(-1).tolist()]


def _entry_values(entries: Any, index: int, prefix: str, keys: tuple[str, ...], out: dict[str, Any]) -> None:
    """``prefix + key`` of the endpoint entry's non-empty values, as a flow record carries them."""
    if 0 <= index < len(entries):
        entry = entries[index]
        for key in keys:
            value = entry.get(key)
            if value is not None and value != "":
                out[prefix + key] = value


def _fixed_bytes(prefix: bytes, column: npt.NDArray[Any], width: int) -> npt.NDArray[np.uint8]:
    n = column.shape[0]
    rows = np.empty((n, len(prefix) + width), np.uint8)
    rows[:, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    rows[:, len(prefix) :] = np.ascontiguousarray(column).view(np.uint8).reshape(n, width)
    return rows


def _events(batch: SpanBatch) -> Segments | None:
    """Each span's ``events`` fields: the events array encoded as columns, then sliced per span."""
    ev = batch.events
    m = len(ev)
    if not m:
        return None
    b = Builder(m, number=3)
    kind = ev["kind"]
    b.fixed64(0x09, ev["time_ns"], omit_zero=True)
    b.categorical(kind, lambda k: field_bytes(2, _EVENT_NAMES.get(k, "retina.flow.report").encode()))
    drop, retransmit = kind == EventKind.DROP, kind == EventKind.RETRANSMIT
    report = ~(drop | retransmit)
    reason = np.where(drop, ev["reason"].astype(np.int64) + 1, 0)
    b.categorical(reason, lambda c: b.attr("retina.drop.reason", STRINGS.name(c - 1)) if c else b"")
    b.integer("retina.drop.packets", ev["packets"], drop)
    b.integer("retina.tcp.retransmits", ev["packets"], retransmit)
    b.categorical(
        np.where(report, 1 + (ev["is_reply"] != 0), 0), lambda c: b.attr("retina.flow.is_reply", c == 2) if c else b""
    )
    b.integer("retina.flow.packets", ev["packets"], report)
    b.integer("retina.flow.bytes", ev["bytes"], report)

    def flags(c: int) -> bytes:
        names = ",".join(name for i, name in enumerate(_FLAGS) if c >> i & 1)
        return b.attr("retina.tcp.flags", names) if c else b""

    b.categorical(np.where(report, ev["tcp_flags"].astype(np.int64), 0), flags)
    content = np.sum([c.lens for c in b.columns], axis=0)
    digits, vlen = varint_matrix(content.astype(np.uint64))
    head = np.zeros((m, 11), np.uint8)
    head[:, 0] = 11 << 3 | 2  # Span.events
    head[:, 1:] = digits
    blob = assemble([matrix(head, 1 + vlen), *b.columns])
    offsets = np.zeros(m + 1, np.int64)
    np.cumsum(content + 1 + vlen, out=offsets[1:])
    start = batch.records["event_start"].astype(np.int64)
    lo, hi = offsets[start], offsets[start + batch.records["event_count"].astype(np.int64)]
    parts = [blob[a:z] for a, z in zip(lo.tolist(), hi.tolist(), strict=True)]
    return table(parts, np.arange(len(parts)))


def _span_columns(batch: SpanBatch) -> list[Segments]:
    r = batch.records
    f = r["flow"]
    n = len(batch)
    b = Builder(n, number=9, exclude=frozenset(_DROPPED_FROM_FLOW))
    ids = np.concatenate(
        [_fixed_bytes(b"\x0a\x10", r["trace_id"], 16), _fixed_bytes(b"\x12\x08", r["span_id"], 8)], axis=1
    )
    b.columns.append(matrix(ids, np.full(n, 28, np.int64)))
    has_parent = np.ascontiguousarray(r["parent_span_id"]).view(np.uint64).reshape(n) != 0
    b.columns.append(matrix(_fixed_bytes(b"\x22\x08", r["parent_span_id"], 8), np.where(has_parent, 10, 0)))
    b.categorical(r["kind"], lambda k: b"\x30" + varint(k) if k else b"")
    b.fixed64(0x39, f["time_start_ns"], omit_zero=True)
    b.fixed64(0x41, f["time_end_ns"], omit_zero=True)
    flows = batch.flows()
    flow_attributes(b, flows)
    b.categorical(r["close_reason"], lambda c: b.attr("retina.span.close_reason", _CLOSE.get(c, "unknown")))
    b.integer("retina.drop.count", r["drops"], r["drops"] != 0)
    b.columns.append(_names_and_status(batch))
    events = _events(batch)
    if events is not None:
        b.columns.append(events)
    dropped = r["dropped_events"].astype(np.uint64)
    digits, vlen = varint_matrix(dropped)
    rows = np.zeros((n, 11), np.uint8)
    rows[:, 0] = 12 << 3  # Span.dropped_events_count
    rows[:, 1:] = digits
    b.columns.append(matrix(rows, np.where(dropped != 0, 1 + vlen, 0)))
    b.categorical(has_parent, lambda p: _FLAGS_TAG + struct.pack("<I", 0x100 | (0x200 if p else 0)))
    return b.columns


def _names_and_status(batch: SpanBatch) -> Segments:
    """Per span its name (field 5) and status (field 15), as :func:`~retina_otel.traces.schema.span_views`
    words them (only the attributes they read are made)."""
    r = batch.records
    f = r["flow"]
    entries = batch.endpoints.entries
    src, dst = _ip_strings(f["src_ip"]), _ip_strings(f["dst_ip"])
    parts = []
    columns = zip(
        f["proto"].tolist(), f["src_port"].tolist(), f["dst_port"].tolist(), f["dst_endpoint"].tolist(),
        r["close_reason"].tolist(), r["status"].tolist(), r["drops"].tolist(), f["event"].tolist(),
        f["dns_rcode"].tolist(), f["drop_reason"].tolist(), strict=True,
    )  # fmt: skip
    for i, (proto, sport, dport, dst_index, close, status, drops, event, rcode, reason) in enumerate(columns):
        attrs: dict[str, Any] = {"network.transport": _TRANSPORT.get(proto, str(proto)), "source.address": src[i]}
        if proto not in (1, 58):
            attrs["source.port"], attrs["destination.port"] = sport, dport
        _entry_values(entries, dst_index, "destination.", _SIDE_NAME_KEYS, attrs)
        attrs["destination.address"] = dst[i]
        extra = batch.dns[i] if batch.dns is not None else None
        query = None if close != CloseReason.DNS else str((extra or {}).get("query") or "")
        out = field_bytes(5, _name(attrs, query).encode())
        message = ""
        if status == StatusCode.ERROR:
            if event == Event.DNS:
                attrs["dns.response_code"] = rcode
                if extra is not None and extra.get("return_code"):
                    attrs["dns.response_code_name"] = extra["return_code"]
            if reason:
                attrs["retina.drop.reason"] = STRINGS.name(reason)
            message = _status_message(status, close, drops, attrs)
        body = (field_bytes(2, message.encode()) if message else b"") + (b"\x18" + varint(status) if status else b"")
        parts.append(out + field_bytes(15, body))
    return table(parts, np.arange(len(parts)))


def _resource_bytes(base_key: tuple[tuple[str, Any], ...], base: dict[str, Any], extra: dict[str, str]) -> bytes:
    """``Resource`` bytes of ``base`` merged with ``extra`` (later keys win, as ``Resource.merge``)."""
    key = (base_key, tuple(sorted(extra.items())))
    found = _RESOURCES.get(key)
    if found is None:
        if len(_RESOURCES) >= _RESOURCES_MAX:
            _RESOURCES.clear()
        merged = {**base, **extra}
        found = _RESOURCES[key] = b"".join(
            field_bytes(1, kv) for k, v in merged.items() if (kv := key_value(k, v)) is not None
        )
    return found


def _resource_groups(batch: SpanBatch) -> tuple[list[dict[str, str]], npt.NDArray[np.intp]]:
    """The observing endpoint's resource of each span (the responder's for SERVER spans, else the
    initiator's): the distinct resources and each span's index into them."""
    r = batch.records
    f = r["flow"]
    server = r["kind"] == SpanKind.SERVER
    index = np.where(server, f["dst_endpoint"], f["src_endpoint"]).tolist()
    address = _ip_strings(np.where(server, f["dst_ip"], f["src_ip"]))
    entries = batch.endpoints.entries
    seen: dict[tuple[bool, int, str], int] = {}
    by_resource: dict[tuple[tuple[str, str], ...], int] = {}
    resources: list[dict[str, str]] = []
    group = np.empty(len(batch), np.intp)
    for i, (is_server, idx, addr) in enumerate(zip(server.tolist(), index, address, strict=True)):
        key = (is_server, idx, addr)
        found = seen.get(key)
        if found is None:
            prefix = "destination" if is_server else "source"
            attrs: dict[str, Any] = {f"{prefix}.address": addr}
            _entry_values(entries, idx, prefix + ".", _RESOURCE_KEYS, attrs)
            resource = _resource(attrs, prefix)
            found = by_resource.setdefault(tuple(sorted(resource.items())), len(resources))
            if found == len(resources):
                resources.append(resource)
            seen[key] = found
        group[i] = found
    return resources, group


def encode_spans(batch: SpanBatch, base: Resource, scope: InstrumentationScope) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of one span batch (b"" when it is empty)."""
    n = len(batch)
    if not n:
        return b""
    if batch.attributes:
        base = base.merge(Resource(dict(batch.attributes)))
    base_attributes = dict(base.attributes)
    base_key = tuple(base_attributes.items())
    columns = _span_columns(batch)
    content = np.sum([c.lens for c in columns], axis=0)
    digits, vlen = varint_matrix(content.astype(np.uint64))
    head = np.zeros((n, 11), np.uint8)
    head[:, 0] = 0x12  # ScopeSpans.spans
    head[:, 1:] = digits
    columns.insert(0, matrix(head, 1 + vlen))
    resources, group = _resource_groups(batch)
    # all spans in resource order, joined once; each resource's spans are then one slice
    order = np.argsort(group, kind="stable")
    spans = assemble([Segments(c.parts[order], c.lens[order]) for c in columns])
    ends = np.cumsum((content + 1 + vlen)[order])
    last = np.searchsorted(group[order], np.arange(len(resources)), side="right") - 1
    scope_field = field_bytes(1, scope_bytes(scope))
    out = []
    start = 0
    for resource, end in zip(resources, ends[last].tolist(), strict=True):
        resource_spans = field_bytes(1, _resource_bytes(base_key, base_attributes, resource))
        out.append(field_bytes(1, resource_spans + field_bytes(2, scope_field + spans[start:end])))
        start = end
    return b"".join(out)
