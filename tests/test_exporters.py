"""Prometheus and OTLP exporters through the real agent service, with a real OTLP/gRPC endpoint."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.config import parse_config
from retina_otel.exporters.prometheus import render
from retina_otel.metrics.store import MetricStore
from retina_otel.receivers.synthetic import make_batch
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.support.otlp_sink import OtlpSink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    s = OtlpSink()
    s.start()
    yield s
    s.stop()


def agent_config(otlp_endpoint: str, **otlp: Any) -> dict[str, Any]:
    return {
        "receivers": {"synthetic": {"interval": 0.05, "records_per_batch": 50, "max_batches": 4}},
        "exporters": {
            "prometheus": {"endpoint": f"127.0.0.1:{free_port()}"},
            "otlp": {
                "endpoint": otlp_endpoint,
                "tls": {"insecure": True},
                "interval": 0.2,
                "flush_interval": 0.1,
                "headers": {"x-tenant": "t1"},
                **otlp,
            },
        },
        "service": {
            "telemetry": {"health": {"endpoint": f"127.0.0.1:{free_port()}"}},
            "pipelines": {
                "metrics": {"receivers": ["synthetic"], "exporters": ["prometheus", "otlp"]},
                "logs": {"receivers": ["synthetic"], "exporters": ["otlp"]},
            },
        },
    }


def scrape(agent: Agent) -> str:
    exporter = next(s.component for s in agent.states() if s.id == "prometheus")
    host, port = exporter.address  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_prometheus_exact_names_no_total_suffix() -> None:
    store = MetricStore()
    store.counter("networkobservability_forward_count", "fwd", ("direction",)).add(("ingress",), 3)
    store.histogram("networkobservability_adv_node_apiserver_latency", "lat", (), bounds=(1.0, 10.0)).observe((), 5)
    text = render(store).decode()
    assert "# TYPE networkobservability_forward_count counter" in text
    assert 'networkobservability_forward_count{direction="ingress"} 3\n' in text
    assert "networkobservability_forward_count_total" not in text
    assert 'networkobservability_adv_node_apiserver_latency_bucket{le="10"} 1\n' in text
    assert 'networkobservability_adv_node_apiserver_latency_bucket{le="+Inf"} 1\n' in text


def test_otlp_grpc_delivers_metrics_and_flow_logs_matching_prometheus(sink: OtlpSink) -> None:
    agent = Agent(parse_config(agent_config(f"127.0.0.1:{sink.port}"), env={}))
    agent.start()
    try:
        assert wait_for(lambda: len(sink.log_records()) >= 200, timeout=15), len(sink.log_records())
        name = "controlplane_networkobservability_synthetic_records"
        assert wait_for(lambda: any(p.as_int == 200 for _, p in sink.metric_points(name)), timeout=10)
        text = scrape(agent)
        assert f"{name} 200\n" in text
        metric = sink.metric(name)
        assert metric.sum.is_monotonic
        assert metric.sum.aggregation_temporality == 2  # CUMULATIVE
        resource, attrs, record = sink.log_records()[0]
        assert resource["k8s.node.name"] == agent.node_name
        assert attrs["network.transport"] == "tcp"
        assert attrs["source.address"].startswith("198.18.0.")
        assert record.event_name == "retina.flow.flow"
        assert sum(a["retina.flow.packets"] for _, a, _ in sink.log_records()) == sum(
            int(make_batch(50, 16, i).records["packets"].sum()) for i in range(4)
        )
        assert any(m.get("x-tenant") == "t1" for m in sink.metadata)
        ready = json.loads(urllib.request.urlopen(_health_url(agent, "/readyz"), timeout=5).read())
        assert ready["ready"] is True
    finally:
        agent.shutdown()


def _health_url(agent: Agent, path: str) -> str:
    from retina_otel.health import HealthServer

    server = HealthServer(agent.config.service.telemetry.health.endpoint, agent.readiness)
    server.start()
    host, port = server.address
    agent_shutdown = agent.shutdown

    def both() -> None:
        agent_shutdown()
        server.shutdown()

    agent.shutdown = both  # type: ignore[method-assign]
    return f"http://{host}:{port}{path}"


def test_dead_endpoint_never_blocks_and_stays_bounded() -> None:
    dead = free_port()  # nothing listens here
    raw = agent_config(f"127.0.0.1:{dead}", queue_size=500, timeout=1.0, batch_size=100)
    raw["receivers"]["synthetic"] = {"interval": 0.01, "records_per_batch": 100, "max_batches": 0}
    agent = Agent(parse_config(raw, env={}))
    agent.start()
    try:
        exporter = next(s.component for s in agent.states() if s.id == "otlp")
        # The pipeline keeps going: batches are produced far faster than a dead endpoint drains them.
        assert wait_for(lambda: _lost(agent, "otlp_logs", "queue_full") >= 1000, timeout=20)
        for _ in range(20):
            assert exporter.queued_records <= 500  # type: ignore[attr-defined]
            time.sleep(0.05)
        start = time.monotonic()
        t0 = time.perf_counter()
        exporter.consume_flows(make_batch(100))  # type: ignore[attr-defined]
        assert time.perf_counter() - t0 < 0.05  # never blocks the caller
        assert "controlplane_networkobservability_lost_events_counter" in scrape(agent)
    finally:
        start = time.monotonic()
        agent.shutdown()
        assert time.monotonic() - start < 15


def _lost(agent: Agent, kind: str, reason: str) -> float:
    family = agent.metrics.get("controlplane_networkobservability_lost_events_counter")
    value = family.value((kind, reason)) if family else None
    return float(value) if isinstance(value, float) else 0.0


def test_otlp_http_protocol_builds_urls() -> None:
    from retina_otel.component import CreateSettings
    from retina_otel.exporters.otlp import OtlpConfig, OtlpExporter

    exporter = OtlpExporter(
        CreateSettings("otlphttp", "exporter"), OtlpConfig(endpoint="http://c:4318/"), "http/protobuf"
    )
    assert exporter._endpoint("/v1/logs") == "http://c:4318/v1/logs"


def test_otlp_exports_a_large_batch_in_batch_size_requests(sink: OtlpSink) -> None:
    """A 1,000-row batch with batch_size 100: every record arrives, no request holds more than 100
    (only that many exist as SDK log records at a time)."""
    raw = agent_config(f"127.0.0.1:{sink.port}", batch_size=100, flush_interval=0.1)
    raw["receivers"]["synthetic"] = {"interval": 0.01, "records_per_batch": 1000, "max_batches": 1}
    agent = Agent(parse_config(raw, env={}))
    agent.start()
    try:
        assert wait_for(lambda: len(sink.log_records()) >= 1000, timeout=15), len(sink.log_records())
        time.sleep(0.3)
        sizes = [sum(len(sl.log_records) for rl in r.resource_logs for sl in rl.scope_logs) for r in sink.log_requests]
        assert sum(sizes) == 1000
        assert max(sizes) <= 100
        exporter = next(s.component for s in agent.states() if s.id == "otlp")
        assert exporter.queued_records == 0  # type: ignore[attr-defined]
    finally:
        agent.shutdown()
