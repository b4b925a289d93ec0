"""A span batch as the bytes of an OTLP ``ExportTraceServiceRequest``, written directly.

The same content as :func:`~retina_otel.exporters.otlp.traces.spans_to_readable` encoded by the SDK:
one ``ResourceSpans`` per distinct observing endpoint (the batch's resource plus the endpoint's
metadata), the ``retina-otel`` scope, and per span its ids, name, kind, times, attributes, events,
status, dropped-event count and flags (``SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE``, plus ``IS_REMOTE`` when it
has a parent, as the SDK writes them). Spans still go through :func:`~retina_otel.traces.schema.span_views`
(one view object per span); what this skips is the SDK span objects and the SDK's protobuf messages.
"""

from __future__ import annotations

import struct
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from retina_otel.exporters.otlp.logwire import resource_bytes, scope_bytes
from retina_otel.exporters.otlp.wire import field_bytes, key_value, varint
from retina_otel.traces.schema import SpanView, span_views
from retina_otel.traces.spans import SpanBatch, StatusCode

__all__ = ["encode_spans"]

_NO_PARENT = bytes(8)
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
_FLAGS_TAG = varint(16 << 3 | 5)  # Span.flags, fixed32


def _attributes(number: int, attributes: dict[str, Any]) -> bytes:
    return b"".join(field_bytes(number, kv) for k, v in attributes.items() if (kv := key_value(k, v)) is not None)


def _fixed64(tag: int, value: int) -> bytes:
    return bytes((tag,)) + value.to_bytes(8, "little") if value else b""


def _span(view: SpanView) -> bytes:
    parts = [field_bytes(1, view.trace_id), field_bytes(2, view.span_id)]
    flags = _FLAGS_HAS_IS_REMOTE
    if view.parent_span_id != _NO_PARENT:
        parts.append(field_bytes(4, view.parent_span_id))
        flags |= _FLAGS_IS_REMOTE
    parts += [
        field_bytes(5, view.name.encode()),
        b"\x30" + varint(int(view.kind)),
        _fixed64(0x39, view.start_ns),
        _fixed64(0x41, view.end_ns),
        _attributes(9, view.attributes),
    ]
    for event in view.events:
        body = _fixed64(0x09, event.time_ns) + field_bytes(2, event.name.encode()) + _attributes(3, event.attributes)
        parts.append(field_bytes(11, body))
    if view.dropped_events:
        parts.append(b"\x60" + varint(view.dropped_events))
    status = b""
    if view.status is StatusCode.ERROR and view.status_message:
        status += field_bytes(2, view.status_message.encode())
    if view.status:
        status += b"\x18" + varint(int(view.status))
    parts.append(field_bytes(15, status))
    parts.append(_FLAGS_TAG + struct.pack("<I", flags))
    return b"".join(parts)


def encode_spans(batch: SpanBatch, base: Resource, scope: InstrumentationScope) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of one span batch (b"" when it is empty)."""
    if batch.attributes:
        base = base.merge(Resource(dict(batch.attributes)))
    groups: dict[tuple[tuple[str, str], ...], tuple[bytes, list[bytes]]] = {}
    for view in span_views(batch):
        key = tuple(sorted(view.resource.items()))
        group = groups.get(key)
        if group is None:
            group = groups[key] = (resource_bytes(base.merge(Resource(view.resource))), [])
        group[1].append(field_bytes(2, _span(view)))  # ScopeSpans.spans
    scope_field = field_bytes(1, scope_bytes(scope))
    out = []
    for resource, spans in groups.values():
        scope_spans = scope_field + b"".join(spans)
        out.append(field_bytes(1, field_bytes(1, resource) + field_bytes(2, scope_spans)))
    return b"".join(out)
