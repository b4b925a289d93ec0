"""The cluster name (``service.cluster_name``, default ``$CLUSTER_NAME``) reaches the OTLP resource
(``k8s.cluster.name``, metrics and logs) and the Prometheus series (label ``cluster`` by default)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.config import parse_config
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.support.otlp_sink import OtlpSink
from tests.test_exporters import agent_config, scrape, sink

__all__ = ["sink"]  # the fixture, imported so pytest finds it here

NAME = "controlplane_networkobservability_synthetic_records"


@contextlib.contextmanager
def _run(raw: dict[str, Any]) -> Iterator[Agent]:
    agent = Agent(parse_config(raw, env={}))
    agent.start()
    try:
        yield agent
    finally:
        agent.shutdown()


def _series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(NAME)]


def test_cluster_name_on_otlp_resource_and_prometheus_series(sink: OtlpSink) -> None:
    raw = agent_config(f"127.0.0.1:{sink.port}")
    raw["service"]["cluster_name"] = "prod-west"
    with _run(raw) as agent:
        assert agent.cluster_name == "prod-west"
        assert wait_for(lambda: len(sink.log_records()) >= 200, timeout=15)
        assert {r["k8s.cluster.name"] for r, _, _ in sink.log_records()} == {"prod-west"}
        assert wait_for(lambda: bool(sink.metric_requests), timeout=10)
        with sink.lock:
            request = sink.metric_requests[-1]
        resource = {a.key: a.value.string_value for a in request.resource_metrics[0].resource.attributes}
        assert resource["k8s.cluster.name"] == "prod-west"
        assert wait_for(lambda: bool(_series(scrape(agent))), timeout=10)
        series = _series(scrape(agent))
        assert series and all('cluster="prod-west"' in line for line in series), series


def test_cluster_name_defaults_to_env_and_label_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_NAME", "from-env")
    base = agent_config("127.0.0.1:1", signals=["metrics"])
    base["service"]["pipelines"].pop("logs")
    base["service"]["pipelines"]["metrics"]["exporters"] = ["prometheus"]
    base["exporters"].pop("otlp")

    def series(prometheus: dict[str, Any]) -> list[str]:
        raw = copy.deepcopy(base)
        raw["exporters"]["prometheus"].update(prometheus)
        with _run(raw) as agent:
            assert agent.cluster_name == "from-env"
            assert wait_for(lambda: bool(_series(scrape(agent))), timeout=10)
            return _series(scrape(agent))

    assert all('cluster="from-env"' in line for line in series({}))
    assert all("cluster=" not in line for line in series({"cluster_label": ""}))
    assert all('k8s_cluster="from-env"' in line for line in series({"cluster_label": "k8s_cluster"}))
    assert all('cluster="pinned"' in line for line in series({"const_labels": {"cluster": "pinned"}}))


def test_no_cluster_name_no_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLUSTER_NAME", raising=False)
    raw = agent_config("127.0.0.1:1", signals=["metrics"])
    raw["service"]["pipelines"].pop("logs")
    raw["service"]["pipelines"]["metrics"]["exporters"] = ["prometheus"]
    raw["exporters"].pop("otlp")
    with _run(raw) as agent:
        assert agent.cluster_name == ""
        assert wait_for(lambda: bool(_series(scrape(agent))), timeout=10)
        assert all("cluster=" not in line for line in _series(scrape(agent)))


def test_bad_cluster_label_is_a_config_error() -> None:
    from retina_otel.config import ConfigError

    raw = agent_config("127.0.0.1:1")
    raw["exporters"]["prometheus"]["cluster_label"] = "not a label"
    with pytest.raises(ConfigError, match=r"exporters\.prometheus\.cluster_label"):
        parse_config(raw, env={})
