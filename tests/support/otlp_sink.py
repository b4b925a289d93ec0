"""A real OTLP/gRPC receiving end built from opentelemetry-proto's service definitions."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class OtlpSink(
    metrics_service_pb2_grpc.MetricsServiceServicer,
    logs_service_pb2_grpc.LogsServiceServicer,
    trace_service_pb2_grpc.TraceServiceServicer,
):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.log_requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.server: grpc.Server | None = None
        self.port = 0

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.metadata.append({k: v for k, v in context.invocation_metadata()})
            if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                self.metric_requests.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.trace_requests.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.log_requests.append(request)
            return logs_service_pb2.ExportLogsServiceResponse()

    def start(self, port: int = 0) -> int:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        # One servicer object serves both services; grpc dispatches by request type through Export.
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self.server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait()
            self.server = None

    # -- decoded views ---------------------------------------------------------------------------
    def metric_points(self, name: str) -> list[tuple[dict[str, str], Any]]:
        """Data points of the LAST export that carried ``name``: (attributes, point)."""
        with self.lock:
            requests = list(self.metric_requests)
        for request in reversed(requests):
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name != name:
                            continue
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points
                        return [({a.key: _any(a.value) for a in p.attributes}, p) for p in points]
        return []

    def metric(self, name: str) -> Any:
        with self.lock:
            requests = list(self.metric_requests)
        for request in reversed(requests):
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == name:
                            return metric
        return None

    def log_records(self) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
        """(resource attributes, record attributes, record) for every received log record."""
        with self.lock:
            requests = list(self.log_requests)
        return _flatten(requests, "resource_logs", "scope_logs", "log_records")

    def spans(self) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
        """(resource attributes, span attributes, span) for every received span."""
        with self.lock:
            requests = list(self.trace_requests)
        return spans_of(requests)


def spans_of(requests: list[Any]) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    """(resource attributes, span attributes, span) of every span in ExportTraceServiceRequests."""
    return _flatten(requests, "resource_spans", "scope_spans", "spans")


def _flatten(
    requests: list[Any], resources: str, scopes: str, items: str
) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    out = []
    for request in requests:
        for rx in getattr(request, resources):
            resource = {a.key: _any(a.value) for a in rx.resource.attributes}
            for sx in getattr(rx, scopes):
                for item in getattr(sx, items):
                    out.append((resource, {a.key: _any(a.value) for a in item.attributes}, item))
    return out


def _any(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None
