"""Store snapshots and flow batches as OpenTelemetry SDK data, ready for the OTLP exporters."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from retina_otel.flows import FlowBatch
from retina_otel.flowschema import interface_names, record_attributes
from retina_otel.metrics.store import FamilySnapshot, HistogramValue, MetricKind

__all__ = ["SCOPE", "flows_to_log_records", "snapshots_to_metrics_data"]

SCOPE = InstrumentationScope("retina-otel", "0.1.0")


def _metric(snap: FamilySnapshot, now_ns: int) -> Metric | None:
    if not snap.series:
        return None
    if snap.kind is MetricKind.HISTOGRAM:
        points = []
        for labels, value, start in snap.series:
            assert isinstance(value, HistogramValue)
            points.append(
                HistogramDataPoint(
                    attributes=dict(zip(snap.label_names, labels, strict=True)),
                    start_time_unix_nano=start,
                    time_unix_nano=now_ns,
                    count=value.count,
                    sum=value.total,
                    bucket_counts=list(value.bucket_counts),
                    explicit_bounds=list(snap.bounds),
                    min=value.minimum if value.count else 0.0,
                    max=value.maximum if value.count else 0.0,
                )
            )
        data: Sum | Gauge | Histogram = Histogram(points, AggregationTemporality.CUMULATIVE)
    else:
        numbers = [
            NumberDataPoint(
                attributes=dict(zip(snap.label_names, labels, strict=True)),
                start_time_unix_nano=start,
                time_unix_nano=now_ns,
                value=_number(value),
            )
            for labels, value, start in snap.series
        ]
        if snap.kind is MetricKind.COUNTER:
            data = Sum(numbers, AggregationTemporality.CUMULATIVE, is_monotonic=True)
        else:
            data = Gauge(numbers)
    return Metric(name=snap.name, description=snap.description, unit=snap.unit, data=data)


def _number(value: float | HistogramValue) -> int | float:
    assert not isinstance(value, HistogramValue)
    return int(value) if float(value).is_integer() else float(value)


def snapshots_to_metrics_data(snapshots: Iterable[FamilySnapshot], resource: Resource) -> MetricsData:
    now = time.time_ns()
    metrics = [m for m in (_metric(s, now) for s in snapshots) if m is not None]
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource,
                scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")],
                schema_url="",
            )
        ]
    )


def flows_to_log_records(
    batch: FlowBatch, resource: Resource, extra_resource: Mapping[str, str] | None = None
) -> list[ReadableLogRecord]:
    """One SDK log record per row; the event name says which kind of flow it is. The exporter encodes
    flow logs itself (:mod:`.logwire`); this is the reference it is tested and benchmarked against."""
    if batch.attributes or extra_resource:
        resource = resource.merge(Resource({**batch.attributes, **(extra_resource or {})}))
    now = time.time_ns()
    out: list[ReadableLogRecord] = []
    end_times = batch.records["time_end_ns"].tolist()
    names = interface_names(batch)
    for i in range(len(batch)):
        attrs = record_attributes(batch, i, names[i])
        event_name = str(attrs.pop("event.name"))
        record = LogRecord(
            timestamp=end_times[i] or now,
            observed_timestamp=now,
            severity_text="INFO",
            severity_number=SeverityNumber.INFO,
            body=event_name,
            attributes=attrs,
            event_name=event_name,
        )
        out.append(ReadableLogRecord(record, resource, SCOPE))
    return out
