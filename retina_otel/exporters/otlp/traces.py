"""Span batches as OpenTelemetry SDK spans: the reference the exporter's own encoder
(:mod:`.spanwire`) is tested and benchmarked against; the exporter does not use it."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from retina_otel.exporters.otlp.convert import SCOPE
from retina_otel.traces import spans as model
from retina_otel.traces.schema import span_views

__all__ = ["spans_to_readable"]

_KIND = {
    model.SpanKind.INTERNAL: SpanKind.INTERNAL,
    model.SpanKind.SERVER: SpanKind.SERVER,
    model.SpanKind.CLIENT: SpanKind.CLIENT,
}
_STATUS = {
    model.StatusCode.UNSET: StatusCode.UNSET,
    model.StatusCode.OK: StatusCode.OK,
    model.StatusCode.ERROR: StatusCode.ERROR,
}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NO_PARENT = bytes(8)


class _Span(ReadableSpan):
    """A finished span with its count of events left out (the SDK's ReadableSpan takes no such count)."""

    def __init__(self, *, dropped_events: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._retina_dropped_events = dropped_events

    @property
    def dropped_events(self) -> int:
        return self._retina_dropped_events


def spans_to_readable(batch: model.SpanBatch, base: Resource) -> list[ReadableSpan]:
    """One SDK span per row; the resource is ``base`` plus the observing endpoint's metadata (one
    :class:`Resource` per distinct endpoint in the batch, so the encoder groups spans by it)."""
    if batch.attributes:
        base = base.merge(Resource(dict(batch.attributes)))
    resources: dict[tuple[tuple[str, str], ...], Resource] = {}
    out: list[ReadableSpan] = []
    for view in span_views(batch):
        key = tuple(sorted(view.resource.items()))
        resource = resources.get(key)
        if resource is None:
            resource = resources[key] = base.merge(Resource(view.resource))
        trace_id = int.from_bytes(view.trace_id, "big")
        context = SpanContext(trace_id, int.from_bytes(view.span_id, "big"), is_remote=False, trace_flags=_SAMPLED)
        parent = None
        if view.parent_span_id != _NO_PARENT:
            parent = SpanContext(
                trace_id, int.from_bytes(view.parent_span_id, "big"), is_remote=True, trace_flags=_SAMPLED
            )
        out.append(
            _Span(
                name=view.name,
                context=context,
                parent=parent,
                resource=resource,
                attributes=view.attributes,
                events=[Event(e.name, e.attributes, e.time_ns) for e in view.events],
                kind=_KIND[view.kind],
                status=Status(_STATUS[view.status], view.status_message or None),
                start_time=view.start_ns,
                end_time=view.end_ns,
                instrumentation_scope=SCOPE,
                dropped_events=view.dropped_events,
            )
        )
    return out
