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

from retina_otel.exporters.otlp.logwire import scope_bytes
from retina_otel.exporters.otlp.wire import field_bytes, key_value, varint
from retina_otel.traces.schema import SpanView, span_views
from retina_otel.traces.spans import SpanBatch, StatusCode

__all__ = ["encode_spans"]

_NO_PARENT = bytes(8)
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
_FLAGS_TAG = varint(16 << 3 | 5)  # Span.flags, fixed32


# Encoded attributes with text or boolean values (pod metadata, enum names: they repeat from span to
# span), per field number; cleared when it grows too big.
_CACHE: dict[tuple[int, str, str | bool], bytes] = {}
_CACHE_MAX = 16_384


def _attribute(number: int, key: str, value: Any) -> bytes:
    if not isinstance(value, str | bool):
        kv = key_value(key, value)
        return b"" if kv is None else field_bytes(number, kv)
    found = _CACHE.get((number, key, value))
    if found is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        kv = key_value(key, value)
        found = _CACHE[(number, key, value)] = b"" if kv is None else field_bytes(number, kv)
    return found


def _attributes(number: int, attributes: dict[str, Any]) -> bytes:
    return b"".join([_attribute(number, k, v) for k, v in attributes.items()])


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


# Encoded resources (the exporter's plus an endpoint's metadata), across batches; bounded like _CACHE.
_RESOURCES: dict[tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, str], ...]], bytes] = {}


def _resource(
    base_key: tuple[tuple[str, Any], ...],
    base: dict[str, Any],
    key: tuple[tuple[str, str], ...],
    extra: dict[str, str],
) -> bytes:
    """``Resource`` bytes of ``base`` merged with ``extra`` (later keys win, as ``Resource.merge``)."""
    found = _RESOURCES.get((base_key, key))
    if found is None:
        if len(_RESOURCES) >= _CACHE_MAX:
            _RESOURCES.clear()
        merged = {**base, **extra}
        found = _RESOURCES[(base_key, key)] = b"".join(
            field_bytes(1, kv) for k, v in merged.items() if (kv := key_value(k, v)) is not None
        )
    return found


def encode_spans(batch: SpanBatch, base: Resource, scope: InstrumentationScope) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of one span batch (b"" when it is empty)."""
    if batch.attributes:
        base = base.merge(Resource(dict(batch.attributes)))
    base_attributes = dict(base.attributes)
    base_key = tuple(base_attributes.items())
    groups: dict[tuple[tuple[str, str], ...], tuple[bytes, list[bytes]]] = {}
    for view in span_views(batch):
        key = tuple(sorted(view.resource.items()))
        group = groups.get(key)
        if group is None:
            group = groups[key] = (_resource(base_key, base_attributes, key, view.resource), [])
        group[1].append(field_bytes(2, _span(view)))  # ScopeSpans.spans
    scope_field = field_bytes(1, scope_bytes(scope))
    out = []
    for resource, spans in groups.values():
        scope_spans = scope_field + b"".join(spans)
        out.append(field_bytes(1, field_bytes(1, resource) + field_bytes(2, scope_spans)))
    return b"".join(out)
