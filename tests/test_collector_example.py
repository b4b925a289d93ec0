"""examples/otel-collector: the collector configuration is consistent (every pipeline names defined
components, every signal reaches its backend) and matches what the agent sends with values-agent.yaml
(endpoint port and protocol, signals), rendered through the real chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "otel-collector"
CHART = EXAMPLE.parents[1] / "charts" / "retina-otel"
OTLP_PORTS = {"grpc": 4317, "http/protobuf": 4318}


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLE / "collector.yaml").read_text())


@pytest.fixture(scope="module")
def agent_values() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLE / "values-agent.yaml").read_text())


def test_pipelines_reference_defined_components(collector: dict[str, Any]) -> None:
    assert set(collector) <= {"receivers", "processors", "exporters", "extensions", "connectors", "service"}
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in collector["service"]["pipelines"].items():
        assert name.split("/")[0] in {"metrics", "logs", "traces"}, name
        assert pipeline["receivers"] and pipeline["exporters"], name
        for section in used:
            for component in pipeline.get(section, []):
                assert component in collector[section], f"{name} uses undefined {section[:-1]} {component}"
                used[section].add(component)
    for section, names in used.items():
        assert set(collector[section]) == names, f"{section} defined but unused: {set(collector[section]) - names}"


def test_signals_reach_their_backends(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    exporters = collector["exporters"]
    (metrics_exp,) = pipelines["metrics"]["exporters"]
    assert metrics_exp.split("/")[0] in {"prometheusremotewrite", "prometheus"}
    if metrics_exp.startswith("prometheusremotewrite"):
        assert exporters[metrics_exp]["endpoint"].endswith("/api/v1/write")
        # Retina's names must survive: no _total suffix added to counters.
        assert exporters[metrics_exp]["add_metric_suffixes"] is False
    (logs_exp,) = pipelines["logs"]["exporters"]
    assert logs_exp.split("/")[0] == "otlphttp" and "loki" in logs_exp
    assert urlsplit(exporters[logs_exp]["endpoint"]).path == "/otlp"  # Loki's native OTLP endpoint
    (traces_exp,) = pipelines["traces"]["exporters"]
    assert traces_exp.split("/")[0] == "otlp" and "tempo" in traces_exp
    assert exporters[traces_exp]["endpoint"].endswith(":4317")


def test_k8s_metadata_is_kept(collector: dict[str, Any]) -> None:
    processors = collector["processors"]
    assert not any(p.split("/")[0] == "k8sattributes" for p in processors), "the agent enriches already"
    for name, body in processors.items():
        for action in (body or {}).get("actions", []) + (body or {}).get("attributes", []):
            key = action.get("key", "") + action.get("pattern", "")
            if action.get("action") in {"delete", "hash", "extract"}:
                assert "k8s" not in key, f"{name} removes Kubernetes metadata ({key})"
    assert any(a["key"] == "k8s.cluster.name" for a in processors["resource/cluster"]["attributes"])
    for pipeline in collector["service"]["pipelines"].values():
        assert pipeline["processors"][0] == "memory_limiter" and pipeline["processors"][-1] == "batch"


def test_agent_values_match_collector_receiver(collector: dict[str, Any], agent_values: dict[str, Any]) -> None:
    otlp = agent_values["agent"]["otlp"]
    assert otlp["enabled"] is True
    protocol = otlp["protocol"]
    receiver = collector["receivers"]["otlp"]["protocols"]["grpc" if protocol == "grpc" else "http"]
    port = int(receiver["endpoint"].rsplit(":", 1)[1])
    assert port == OTLP_PORTS[protocol]
    endpoint = otlp["endpoint"]
    target = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    assert target.port == port, f"agent sends to {endpoint}, collector listens on {port} for {protocol}"
    assert otlp["metrics"] and otlp["flowLogs"]
    assert {"metrics", "logs"} <= set(collector["service"]["pipelines"])
    assert otlp.get("headers", []) == [] or all("secretName" in h for h in otlp["headers"])


def test_agent_values_render_to_matching_agent_config(agent_values: dict[str, Any]) -> None:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(agent_values)
        rendered = chart.render(values=agent_values, name="retina-otel", namespace="kube-system")
    (cm,) = [d for path, text in rendered.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text)
             if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-agent")]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    exporter_type = "otlp" if agent_values["agent"]["otlp"]["protocol"] == "grpc" else "otlphttp"
    exporter = config["exporters"][exporter_type]
    assert exporter["endpoint"] == agent_values["agent"]["otlp"]["endpoint"]
    assert exporter["protocol"] == agent_values["agent"]["otlp"]["protocol"]
    assert exporter["tls"]["insecure"] is agent_values["agent"]["otlp"]["insecure"]
    pipelines = config["service"]["pipelines"]
    assert exporter_type in pipelines["metrics"]["exporters"]
    if "logs" in exporter["signals"]:
        assert exporter_type in pipelines["logs"]["exporters"]
    if agent_values["agent"].get("traces", {}).get("enabled"):
        assert "traces" in exporter["signals"] and "spans" in pipelines["logs"]["exporters"]
        assert pipelines["traces"] == {"receivers": ["spans"], "exporters": [exporter_type]}
