"""The ``spans`` connector in the agent: config validation, logs -> traces wiring, OTLP out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.config import ConfigError, parse_config
from retina_otel.connectors.spans import SpanConnector
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.support.otlp_sink import OtlpSink
from tests.test_exporters import free_port

TRACE_ALL = [{"captureLevel": "FirstPacket", "traceTargets": [{"to": {"ipBlock": {"cidr": "198.18.0.0/15"}}}]}]


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    s = OtlpSink()
    s.start()
    yield s
    s.stop()


def config(spans: dict[str, Any], exporters: dict[str, Any], traces_exporters: list[str]) -> dict[str, Any]:
    return {
        "receivers": {"synthetic": {"interval": 0.05, "records_per_batch": 64, "flows": 16, "max_batches": 3}},
        "connectors": {"spans": spans},
        "exporters": exporters,
        "service": {
            "telemetry": {"health": {"endpoint": f"127.0.0.1:{free_port()}"}},
            "pipelines": {
                "logs": {"receivers": ["synthetic"], "exporters": ["spans"]},
                "traces": {"receivers": ["spans"], "exporters": traces_exporters},
            },
        },
    }


def test_connector_validates_and_wrong_signals_are_rejected() -> None:
    parse_config(config({"traces": TRACE_ALL}, {"debug": {}}, ["debug"]))
    bad = config({"traces": TRACE_ALL}, {"prometheus": {"endpoint": "127.0.0.1:0"}}, ["prometheus"])
    with pytest.raises(ConfigError, match=r"service\.pipelines\.traces\.exporters\[0\]"):
        parse_config(bad)
    with pytest.raises(ConfigError, match=r"connectors\.spans\.traces\.0\.captureLevel"):
        parse_config(config({"traces": [{"captureLevel": "Sometimes"}]}, {"debug": {}}, ["debug"]))


def test_flows_become_spans_exported_over_otlp(sink: OtlpSink) -> None:
    exporters = {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "tls": {"insecure": True}, "flush_interval": 0.1}}
    agent = Agent(parse_config(config({"traces": TRACE_ALL}, exporters, ["otlp"])))
    agent.start()
    try:
        connector = next(s.component for s in agent.states() if s.id == "spans")
        assert isinstance(connector, SpanConnector)
        assert wait_for(lambda: connector.open_connections == 16)
    finally:
        agent.shutdown()  # open connections end as spans (close reason shutdown), flushed by the exporter
    spans = sink.spans()
    assert len(spans) == 16
    assert {attrs["retina.span.close_reason"] for _, attrs, _ in spans} == {"shutdown"}
    assert {span.kind for _, _, span in spans} == {3}  # CLIENT: observed leaving the initiator's pod
    assert len({span.trace_id for _, _, span in spans}) == 16


def test_without_any_trace_configuration_nothing_is_built(sink: OtlpSink) -> None:
    exporters = {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "tls": {"insecure": True}, "flush_interval": 0.1}}
    agent = Agent(parse_config(config({}, exporters, ["otlp"])))
    agent.start()
    try:
        connector = next(s.component for s in agent.states() if s.id == "spans")
        assert isinstance(connector, SpanConnector)
        assert wait_for(lambda: any(s.detail.startswith("nothing to trace") for s in agent.states() if s.id == "spans"))
        assert not connector.tracing  # zero cost: consume_flows returns at once
    finally:
        agent.shutdown()
    assert sink.spans() == []
