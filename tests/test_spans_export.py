"""Spans over OTLP (gRPC and HTTP) into receiving ends built from opentelemetry-proto, and the debug exporter."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from retina_otel.component import CreateSettings
from retina_otel.exporters.debug import DebugConfig, DebugExporter
from retina_otel.exporters.otlp import OtlpConfig, OtlpExporter
from retina_otel.flows import EndpointTable, FlowBatch
from retina_otel.testing import TestHost, wait_for
from retina_otel.traces.spans import SpanBatch
from tests.support.otlp_sink import OtlpSink, spans_of
from tests.test_spans_builder import SEC, T0, C, builder, connection, drop_row

CLIENT_META = {
    "k8s.namespace.name": "shop",
    "k8s.pod.name": "frontend-1",
    "k8s.workload.name": "frontend",
    "retina.endpoint.kind": "pod",
}
SERVER_META = {
    "k8s.namespace.name": "shop",
    "k8s.pod.name": "checkout-1",
    "k8s.service.name": "checkout",
    "k8s.workload.name": "checkout",
    "retina.endpoint.kind": "pod",
}


def spans(n: int = 3, refused: bool = False) -> SpanBatch:
    b, clock = builder()
    for i in range(n):
        batch = connection(42000 + i, T0 + i * 10_000, refused=refused)
        batch.endpoints = EndpointTable((CLIENT_META, SERVER_META))
        reply = batch.records["is_reply"] == 1
        batch.records["src_endpoint"] = [1 if r else 0 for r in reply]
        batch.records["dst_endpoint"] = [0 if r else 1 for r in reply]
        b.add(batch)
    drop = FlowBatch.empty(1)
    drop_row(drop, 0, 42000, T0 + 2000, 2)
    b.add(drop)
    clock.now += 3 * SEC
    out = b.take()
    assert out is not None and len(out) == 2 * n
    return out


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    s = OtlpSink()
    s.start()
    yield s
    s.stop()


class _HttpTraces(http.server.BaseHTTPRequestHandler):
    requests: list[Any] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).requests.append((self.path, request))
        payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        return None


def check_spans(received: list[tuple[dict[str, Any], dict[str, Any], Any]], n: int) -> None:
    assert len(received) == 2 * n
    by_trace: dict[bytes, list[Any]] = {}
    for resource, attrs, span in received:
        by_trace.setdefault(span.trace_id, []).append((resource, attrs, span))
    assert len(by_trace) == n
    for pair in by_trace.values():
        kinds = {span.kind: (resource, attrs, span) for resource, attrs, span in pair}
        client_r, client_a, client = kinds[3]  # SPAN_KIND_CLIENT
        server_r, _server_a, server = kinds[2]  # SPAN_KIND_SERVER
        assert server.parent_span_id == client.span_id and not client.parent_span_id
        assert client_r["service.name"] == "frontend" and server_r["service.name"] == "checkout"
        assert client_r["k8s.pod.name"] == "frontend-1" and client_r["k8s.node.name"] == "test-node"
        assert client.name == f"tcp {C}:{client_a['source.port']} -> checkout:8080"
        assert client_a["destination.k8s.pod.name"] == "checkout-1" and client_a["retina.flow.packets"] == 3
        assert client.end_time_unix_nano - client.start_time_unix_nano == 4000
        if client_a["source.port"] == 42000:
            assert client.status.code == 2 and "2 packets dropped (NETFILTER_DROP)" in client.status.message
            assert [e.name for e in client.events] == ["retina.drop"]
            assert {a.key: a.value.string_value for a in client.events[0].attributes}["retina.drop.reason"] == (
                "NETFILTER_DROP"
            )
        else:
            assert client.status.code == 0 and not client.events


def test_spans_over_grpc(sink: OtlpSink) -> None:
    host = TestHost()
    exporter = OtlpExporter(
        CreateSettings("otlp", "exporter"),
        OtlpConfig(endpoint=f"127.0.0.1:{sink.port}", tls={"insecure": True}, flush_interval=0.1, signals=["traces"]),
        "grpc",
    )
    exporter.start(host)
    try:
        exporter.consume_spans(spans(3))
        assert wait_for(lambda: len(sink.spans()) >= 6)
    finally:
        exporter.shutdown()
    check_spans(sink.spans(), 3)
    assert exporter.queued_spans == 0


def test_spans_over_http() -> None:
    _HttpTraces.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HttpTraces)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = TestHost()
    exporter = OtlpExporter(
        CreateSettings("otlphttp", "exporter"),
        OtlpConfig(endpoint=f"http://127.0.0.1:{server.server_address[1]}", flush_interval=0.1, signals=["traces"]),
        "http/protobuf",
    )
    exporter.start(host)
    try:
        exporter.consume_spans(spans(2))
        assert wait_for(lambda: len(spans_of([r for _, r in _HttpTraces.requests])) >= 4)
    finally:
        exporter.shutdown()
        server.shutdown()
        server.server_close()
    assert {path for path, _ in _HttpTraces.requests} == {"/v1/traces"}
    check_spans(spans_of([r for _, r in _HttpTraces.requests]), 2)


def test_full_queue_and_failed_exports_are_counted_as_lost_traces() -> None:
    host = TestHost()
    exporter = OtlpExporter(
        CreateSettings("otlp", "exporter"),
        OtlpConfig(
            endpoint="127.0.0.1:9", tls={"insecure": True}, timeout=0.5, queue_size=4, batch_size=10, flush_interval=30
        ),
        "grpc",
    )
    exporter.start(host)
    try:
        exporter.consume_spans(spans(2))  # 4 spans: fit
        exporter.consume_spans(spans(1))  # 2 more: queue full
    finally:
        exporter.shutdown()
    lost = {
        labels: value
        for labels, value, _ in next(s for s in host.metrics.collect() if s.name.endswith("lost_events_counter")).series
    }
    assert lost[("otlp_traces", "queue_full")] == 2
    assert lost[("otlp_traces", "export_failed")] == 4


def test_debug_exporter_prints_spans(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = DebugExporter(CreateSettings("debug", "exporter"), DebugConfig(verbosity="normal"))
    exporter.start(TestHost())
    exporter.consume_spans(spans(1, refused=True))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert all("ERROR connection refused" in line for line in out)
    assert any(line.startswith("span CLIENT tcp 198.18.3.7:42000 -> checkout:8080") for line in out)
