"""The Helm chart: rendered over a matrix of values with the Helm v4 SDK (no helm binary), linted,
every manifest validated against a current Kubernetes schema, the values schema rejecting bad values,
and the rendered agent ConfigMap accepted by the agent's own config loader."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from retina_otel.config import ConfigError, parse_config
from retina_otel.controller import run
from retina_otel.registry import get_factory

CHART = Path(__file__).resolve().parents[1] / "charts" / "retina-otel"
RELEASE = "ro"
NAMESPACE = "retina"
# Newest schema kubernetes-validate bundles; the chart's kubeVersion floor is 1.25.
KUBE_VERSION = kubernetes_validate.latest_version()

# Kinds that are not in Kubernetes' own schema; checked structurally instead.
NON_CORE_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}

OTLP_HEADERS = [
    {"name": "authorization", "secretName": "otlp-credentials", "secretKey": "authorization"},
    {"name": "X-Scope-OrgID", "secretName": "otlp-credentials", "secretKey": "tenant"},
]

CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "observer-off": {"agent": {"observer": {"enabled": False}}},
    "observer-tcp-mtls": {
        "agent": {"observer": {"tcp": {"enabled": True, "tlsSecretName": "observer-tls", "clientAuth": True}}}
    },
    "observer-tcp-insecure": {"agent": {"observer": {"bufferSize": 65536, "tcp": {"enabled": True, "insecure": True}}}},
    "operator-off": {"operator": {"enabled": False}},
    "agent-off": {"agent": {"enabled": False}},
    "otlp-grpc-headers": {
        "agent": {
            "otlp": {
                "enabled": True,
                "endpoint": "otel-collector.observability.svc:4317",
                "insecure": True,
                "headers": OTLP_HEADERS,
            }
        }
    },
    "otlp-http-metrics-only": {
        "agent": {
            "otlp": {
                "enabled": True,
                "endpoint": "http://otel-collector.observability.svc:4318",
                "protocol": "http/protobuf",
                "flowLogs": False,
            }
        }
    },
    "pod-level-remote-context": {
        "agent": {"podLevel": True, "remoteContext": True, "enableAnnotations": True},
    },
    "node-level-only": {"agent": {"podLevel": False}},
    "low-aggregation-sampled": {"agent": {"dataAggregationLevel": "low", "dataSamplingRate": 10}},
    "service-monitor": {"agent": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "pod-monitor-no-service": {
        "agent": {"service": {"enabled": False}, "podMonitor": {"enabled": True}},
    },
    "dashboards": {"dashboards": {"enabled": True, "annotations": {"grafana_folder": "Network"}}},
    "privileged-legacy-kernel": {"agent": {"privileged": True, "hostPID": True}},
    "no-rbac-existing-service-accounts": {
        "rbac": {"create": False},
        "operator": {"serviceAccount": {"create": False, "name": "ops"}},
        "agent": {"serviceAccount": {"create": False, "name": "agents"}},
    },
    "receivers-off": {
        "agent": {
            "receivers": {
                name: {"enabled": False}
                for name in ("packetparser", "dropreason", "tcpretrans", "dns")
            }
        }
    },
    "operator-installs-crds": {"operator": {"installCRDs": True, "retinaEndpoints": True}},
    "operator-ha": {"operator": {"replicas": 3, "leaderElection": {"peeringName": "retina", "lifetime": 30}}},
    "operator-no-leader-election": {"operator": {"leaderElection": {"enabled": False}}},
    "operator-capture-namespaces": {"operator": {"captureNamespaces": ["default", "shop"], "jobNumLimit": 5}},
    "cluster-name": {"clusterName": "prod-eu-1"},
    "traces-to-tempo": {
        "agent": {
            "otlp": {"enabled": True, "endpoint": "otel-collector.observability.svc:4317", "flowLogs": False},
            "traces": {
                "enabled": True,
                "standalone": [{"captureLevel": "FirstPacket", "includeLayer7Data": True,
                                "traceTargets": [{"to": {"podSelector": {"matchLabels": {"app": "checkout"}}}}]}],
                "config": {"max_connections": 100000},
            },
        }
    },
    "tcplatency-off": {"agent": {"receivers": {"tcplatency": {"enabled": False}}}},
    "tcplatency-tuned": {
        "agent": {"receivers": {"tcplatency": {"enabled": True, "config": {
            "apiserver_ips": ["198.18.0.1"], "use_kubernetes_service_host": False, "max_flows": 4096}}}},
    },
    "hubble": {
        "agent": {"hubble": {"enabled": True}, "serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}
    },
    "hubble-otlp-custom": {
        "agent": {
            "otlp": {"enabled": True, "endpoint": "otel-collector.observability.svc:4317", "flowLogs": False},
            "observer": {"enabled": False},
            "processors": {"flowmetrics": {"enabled": False}},
            "hubble": {"enabled": True, "metrics": {"enabled": ["dns:query;ignoreAAAA", "drop", "tcp", "flow", "icmp",
                                                                 "port-distribution"], "port": 19965,
                                                     "config": {"series_ttl_seconds": 600}}},
        }
    },
    "no-flow-consumer": {"agent": {"podLevel": False, "observer": {"enabled": False}}},
    "digest-and-pull-secrets": {
        "image": {"digest": "sha256:" + "0" * 64},
        "imagePullSecrets": ["regcred"],
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders (templates, then crds/ as Helm installs them first)."""
    rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def crd_docs(chart: Any) -> list[dict[str, Any]]:
    return [d for f in chart.crds for d in yaml.safe_load_all(f["data"]) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def agent_config_text(docs: list[dict[str, Any]]) -> str:
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-agent")]
    return str(cm["data"]["config.yaml"])


def component_present(kind: str, type_name: str) -> bool:
    """Whether this checkout has a loadable factory for the type (components land concurrently)."""
    try:
        return get_factory(kind, type_name) is not None  # type: ignore[arg-type]
    except Exception:
        return False


def missing_components(raw: dict[str, Any]) -> list[str]:
    """Component types a rendered config names that this checkout does not have yet."""
    missing = []
    for section, kind in (("receivers", "receiver"), ("processors", "processor"), ("exporters", "exporter")):
        missing += [f"{kind} {cid}" for cid in raw.get(section) or {} if not component_present(kind, cid.split("/")[0])]
    return missing


# -- rendering and validation ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_pass_schema_and_lint(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_validates(chart: Any, case: str) -> None:
    # The CRDs do not depend on values: validate them once, with the defaults.
    docs = render(chart, CASES[case]) + (crd_docs(chart) if case == "defaults" else [])
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["name"], name
        if key in NON_CORE_KINDS:
            assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, name
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{case}: {name}: {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_agent_config_is_valid(chart: Any, case: str) -> None:
    docs = render(chart, CASES[case])
    if not CASES[case].get("agent", {}).get("enabled", True):
        assert not by_kind(docs, "DaemonSet")
        return
    text = agent_config_text(docs)
    raw = yaml.safe_load(text)
    assert not missing_components(raw), "the chart configures components this tree does not have"
    env = {"NODE_NAME": "node-1"}
    env.update({h: "secret" for h in re.findall(r"\$\{env:([A-Z0-9_]+)\}", text)})
    try:
        parse_config(raw, env=env)
    except ConfigError as exc:
        pytest.fail(f"{case}: the rendered agent config is rejected:\n{exc}\n---\n{text}")


def test_default_config_names_only_present_components(chart: Any) -> None:
    """The chart's defaults enable only components this checkout has (the rest sit behind flags)."""
    raw = yaml.safe_load(agent_config_text(render(chart, {})))
    assert missing_components(raw) == []
    parse_config(raw, env={})


def test_observer_socket_tcp_port_and_tls(chart: Any) -> None:
    """Default: the observer in the logs pipeline on the hostPath socket, no TCP. TCP: port 4244 named
    `observer` on the container, TLS files from the Secret (ca.crt only with clientAuth)."""
    docs = render(chart, {})
    raw = yaml.safe_load(agent_config_text(docs))
    assert raw["exporters"]["observer"] == {
        "buffer_size": 4096,
        "socket": "unix:///var/run/retina-otel/observer.sock",
        "event_records": "while_following",
    }
    assert "observer" in raw["service"]["pipelines"]["logs"]["exporters"]
    (container,) = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"]
    assert "observer" not in {p["name"] for p in container["ports"]}
    docs = render(chart, CASES["observer-tcp-mtls"])
    raw = yaml.safe_load(agent_config_text(docs))
    assert raw["exporters"]["observer"]["tcp_endpoint"] == ":4244"
    assert raw["exporters"]["observer"]["tls"] == {
        "cert_file": "/etc/retina-otel/observer-tls/tls.crt",
        "key_file": "/etc/retina-otel/observer-tls/tls.key",
        "client_ca_file": "/etc/retina-otel/observer-tls/ca.crt",
    }
    spec = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["observer"] == 4244
    secret = next(v for v in spec["volumes"] if v["name"] == "observer-tls")
    assert secret["secret"]["secretName"] == "observer-tls"
    off = yaml.safe_load(agent_config_text(render(chart, CASES["observer-off"])))
    assert "observer" not in off["exporters"]


def test_default_pipeline_shape(chart: Any) -> None:
    raw = yaml.safe_load(agent_config_text(render(chart, {})))
    assert raw["exporters"]["prometheus"] == {"endpoint": "0.0.0.0:10093"}
    assert raw["service"]["telemetry"]["health"]["endpoint"] == "0.0.0.0:18081"
    pipelines = raw["service"]["pipelines"]
    assert {"packetforward", "linuxutil"} <= set(pipelines["metrics"]["receivers"])
    assert "prometheus" in pipelines["metrics"]["exporters"]
    connectors = set(raw.get("connectors") or {})
    for pipeline in pipelines.values():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(section, [])) <= set(raw.get(section) or {}) | connectors


def test_defaults_deploy_every_receiver_the_agent_has(chart: Any) -> None:
    """Retina's default plugins (dns included) plus the agent's own: nothing is left off by default."""
    raw = yaml.safe_load(agent_config_text(render(chart, {})))
    assert set(raw["receivers"]) == {
        "packetforward", "linuxutil", "packetparser", "dropreason", "tcpretrans", "dns", "tcplatency",
        "nodeconnectivity"}
    pipelines = raw["service"]["pipelines"]
    assert "dns" in pipelines["logs"]["receivers"]
    # tcplatency publishes metrics (API-server latency) and feeds RTT to flows through its processor.
    assert "tcplatency" in pipelines["metrics"]["receivers"]
    assert raw["receivers"]["tcplatency"] == {"interval": 10}
    assert pipelines["logs"]["processors"] == ["k8sattributes", "tcplatency"]
    config = parse_config(raw, env={})
    assert config.receivers["tcplatency"].config.apiserver_metrics is True  # type: ignore[attr-defined]
    assert config.receivers["tcplatency"].config.use_kubernetes_service_host is True  # type: ignore[attr-defined]


def test_apiserver_dashboard_is_fed_by_the_defaults(chart: Any) -> None:
    """Every metric the chart's API-server dashboard queries is published by a receiver the defaults enable."""
    import json

    text = json.dumps(json.loads((CHART / "dashboards" / "apiserver.json").read_text()))
    names = set(re.findall(r"networkobservability_(adv_node_apiserver_[a-z_]+?)(?:_bucket|_count|_sum)?\b", text))
    assert names == {"adv_node_apiserver_latency", "adv_node_apiserver_tcp_handshake_latency",
                     "adv_node_apiserver_no_response"}
    raw = yaml.safe_load(agent_config_text(render(chart, {})))
    assert raw["receivers"]["tcplatency"].get("apiserver_metrics", True) is True
    # The Service environment variables the receiver uses are injected into host-network pods too.
    (ds,) = by_kind(render(chart, {}), "DaemonSet")
    assert ds["spec"]["template"]["spec"].get("enableServiceLinks", True) is True


def test_node_connectivity_probes_the_health_port_with_the_watch_cache(chart: Any) -> None:
    raw = yaml.safe_load(agent_config_text(render(chart, {"agent": {"healthPort": 18099}})))
    assert raw["receivers"]["nodeconnectivity"] == {"port": 18099}
    assert "nodeconnectivity" in raw["service"]["pipelines"]["metrics"]["receivers"]
    assert "k8sattributes" in raw["processors"]  # where its nodes come from
    # Without podLevel there is no watch cache, so no nodes to probe: the receiver is left out.
    raw = yaml.safe_load(agent_config_text(render(chart, CASES["node-level-only"])))
    assert "nodeconnectivity" not in raw["receivers"]
    assert "nodeconnectivity" not in raw["service"]["pipelines"]["metrics"]["receivers"]


def test_tcplatency_is_configurable(chart: Any) -> None:
    raw = yaml.safe_load(agent_config_text(render(chart, CASES["tcplatency-off"])))
    assert "tcplatency" not in raw["receivers"]
    # Without the receiver the processor would only warn and pass flows through: the chart leaves it out.
    assert "tcplatency" not in (raw.get("processors") or {})
    assert "tcplatency" not in raw["service"]["pipelines"]["logs"]["processors"]
    raw = yaml.safe_load(agent_config_text(render(chart, CASES["tcplatency-tuned"])))
    assert raw["receivers"]["tcplatency"] == {
        "interval": 10, "apiserver_ips": ["198.18.0.1"], "use_kubernetes_service_host": False, "max_flows": 4096}
    values = {"agent": {"processors": {"tcplatency": {"enabled": False}}}}
    raw = yaml.safe_load(agent_config_text(render(chart, values)))
    assert "tcplatency" in raw["receivers"] and "tcplatency" not in raw["processors"]


def test_cluster_name_reaches_the_agent(chart: Any) -> None:
    def env_of(values: dict[str, Any]) -> dict[str, Any]:
        (ds,) = by_kind(render(chart, values), "DaemonSet")
        return {e["name"]: e for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env_of(CASES["cluster-name"])["CLUSTER_NAME"] == {"name": "CLUSTER_NAME", "value": "prod-eu-1"}
    assert "CLUSTER_NAME" not in env_of({})


def test_otlp_headers_come_from_secrets(chart: Any) -> None:
    docs = render(chart, CASES["otlp-grpc-headers"])
    text = agent_config_text(docs)
    raw = yaml.safe_load(text)
    otlp = raw["exporters"]["otlp"]
    assert otlp["endpoint"] == "otel-collector.observability.svc:4317"
    assert otlp["protocol"] == "grpc"
    assert otlp["tls"] == {"insecure": True}
    assert otlp["headers"] == {
        "authorization": "${env:RETINA_OTEL_OTLP_HEADER_AUTHORIZATION}",
        "X-Scope-OrgID": "${env:RETINA_OTEL_OTLP_HEADER_X_SCOPE_ORGID}",
    }
    assert "otlp" in raw["service"]["pipelines"]["metrics"]["exporters"]
    (ds,) = by_kind(docs, "DaemonSet")
    env = {e["name"]: e for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["RETINA_OTEL_OTLP_HEADER_AUTHORIZATION"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "otlp-credentials", "key": "authorization"}
    assert "value" not in env["RETINA_OTEL_OTLP_HEADER_X_SCOPE_ORGID"]
    # The env substitution the agent performs yields the secret's value.
    config = parse_config(raw, env={"RETINA_OTEL_OTLP_HEADER_AUTHORIZATION": "Bearer t",
                                    "RETINA_OTEL_OTLP_HEADER_X_SCOPE_ORGID": "tenant-a"})
    assert config.exporters["otlp"].config.headers["authorization"] == "Bearer t"  # type: ignore[attr-defined]


def test_otlp_http_uses_otlphttp_exporter(chart: Any) -> None:
    raw = yaml.safe_load(agent_config_text(render(chart, CASES["otlp-http-metrics-only"])))
    assert "otlp" not in raw["exporters"]
    assert raw["exporters"]["otlphttp"]["signals"] == ["metrics"]
    assert "otlphttp" not in raw["service"]["pipelines"].get("logs", {}).get("exporters", [])


def test_aggregation_and_sampling_reach_packetparser(chart: Any) -> None:
    values = {"agent": {"dataAggregationLevel": "low", "dataSamplingRate": 10,
                        "receivers": {"packetparser": {"enabled": True}}}}
    raw = yaml.safe_load(agent_config_text(render(chart, values)))
    assert raw["receivers"]["packetparser"]["aggregation"] == "low"
    assert raw["receivers"]["packetparser"]["sampling_rate"] == 10


def test_daemonset_shape(chart: Any) -> None:
    (ds,) = by_kind(render(chart, {}), "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["hostPID"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "NET_ADMIN", "NET_RAW", "SYS_RESOURCE"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 10093, "health": 18081}
    node_name = next(e for e in container["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts["/lib/modules"] is True and mounts["/usr/src"] is True
    assert {"/sys/fs/bpf", "/sys/kernel/tracing", "/sys/kernel/debug"} <= set(mounts)
    hostpaths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert hostpaths == {
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/lib/modules",
        "/usr/src",
        "/var/run/retina-otel",  # the observer's unix socket
    }


def test_agent_rbac_is_read_only(chart: Any) -> None:
    docs = render(chart, CASES["pod-level-remote-context"])
    (role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-agent")]
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "services", "nodes", "namespaces", "endpointslices", "metricsconfigurations",
                         "retinaendpoints"}
    # Without remote context the agent has no business reading RetinaEndpoints.
    (role,) = [d for d in by_kind(render(chart, {}), "ClusterRole") if d["metadata"]["name"].endswith("-agent")]
    assert "retinaendpoints" not in {r for rule in role["rules"] for r in rule["resources"]}


def test_traces_pipeline_sends_connection_spans_over_otlp(chart: Any) -> None:
    docs = render(chart, CASES["traces-to-tempo"])
    raw = yaml.safe_load(agent_config_text(docs))
    spans = raw["connectors"]["spans"]
    assert spans["traces_configuration"] == {"enabled": True} and spans["max_connections"] == 100000
    assert spans["traces"][0]["traceTargets"][0]["to"]["podSelector"] == {"matchLabels": {"app": "checkout"}}
    pipelines = raw["service"]["pipelines"]
    assert pipelines["logs"]["exporters"][-1] == "spans" and "nop" not in pipelines["logs"]["exporters"]
    assert pipelines["traces"] == {"receivers": ["spans"], "exporters": ["otlp"]}
    assert raw["exporters"]["otlp"]["signals"] == ["metrics", "traces"]
    (role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-agent")]
    assert "tracesconfigurations" in {r for rule in role["rules"] for r in rule["resources"]}
    with pytest.raises(Exception, match=r"agent\.traces\.enabled needs agent\.otlp\.enabled"):
        render(chart, {"agent": {"traces": {"enabled": True}}})


def test_flowmetrics_is_a_connector_and_every_receiver_publishes(chart: Any) -> None:
    """The embedded default's form (docs/pipelines.md): flowmetrics ends the logs pipeline and feeds the
    metrics pipeline; no nop exporter. Every receiver is in the metrics pipeline, since a receiver's own
    metrics (dropreason's drop counts, dns's counts, ...) are published only by the pipelines listing it."""
    raw = yaml.safe_load(agent_config_text(render(chart, {})))
    pipelines = raw["service"]["pipelines"]
    assert "flowmetrics" not in (raw.get("processors") or {})
    assert raw["connectors"]["flowmetrics"]["metrics_configuration"] == {"enabled": True}
    assert pipelines["logs"]["exporters"] == ["flowmetrics", "observer"]
    assert pipelines["metrics"]["receivers"][-1] == "flowmetrics"
    assert set(raw["receivers"]) <= set(pipelines["metrics"]["receivers"])
    config = parse_config(raw, env={})
    assert config.connectors["flowmetrics"].config.pod_level is True  # type: ignore[attr-defined]
    for case in CASES.values():
        if case.get("agent", {}).get("enabled", True):
            text = agent_config_text(render(chart, case))
            assert "nop" not in text, case
    # Nothing takes flows (node level, no observer, no OTLP flow logs): no logs pipeline at all, the flow
    # receivers still publish their node metrics.
    raw = yaml.safe_load(agent_config_text(render(chart, CASES["no-flow-consumer"])))
    assert list(raw["service"]["pipelines"]) == ["metrics"]
    metric_receivers = set(raw["service"]["pipelines"]["metrics"]["receivers"])
    assert {"packetparser", "dropreason", "tcpretrans", "dns"} <= metric_receivers
    assert "connectors" not in raw


def test_hubble_mode_serves_hubbles_metrics_on_9965(chart: Any) -> None:
    """agent.hubble.enabled (Retina's Hubble chart): the hubblemetrics connector with Retina's default
    handlers, a prometheus/hubble exporter on 9965, the port on the pod, the Service and both monitors."""
    assert "hubblemetrics" not in agent_config_text(render(chart, {}))
    docs = render(chart, CASES["hubble"])
    raw = yaml.safe_load(agent_config_text(docs))
    assert raw["connectors"]["hubblemetrics"] == {"metrics": [
        "flow:sourceEgressContext=pod;destinationIngressContext=pod",
        "tcp:sourceEgressContext=pod;destinationIngressContext=pod",
        "dns:query;sourceEgressContext=pod;destinationIngressContext=pod",
        "drop:sourceEgressContext=pod;destinationIngressContext=pod",
    ]}
    assert raw["exporters"]["prometheus/hubble"] == {"endpoint": "0.0.0.0:9965"}
    pipelines = raw["service"]["pipelines"]
    assert pipelines["logs"]["exporters"] == ["flowmetrics", "hubblemetrics", "observer"]
    assert pipelines["metrics/hubble"] == {"receivers": ["hubblemetrics"], "exporters": ["prometheus/hubble"]}
    assert "hubblemetrics" not in pipelines["metrics"]["receivers"]
    config = parse_config(raw, env={"NODE_NAME": "node-1"})
    assert config.connectors["hubblemetrics"].factory.kind == "connector"
    (container,) = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["hubble-metrics"] == 9965
    (svc,) = by_kind(docs, "Service")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"metrics": 10093, "hubble-metrics": 9965}
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics", "hubble-metrics"]
    (pm,) = by_kind(docs, "PodMonitor")
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics", "hubble-metrics"]
    # Its own handlers, port and settings; also over OTLP with the agent's metrics; flowmetrics may be off.
    raw = yaml.safe_load(agent_config_text(render(chart, CASES["hubble-otlp-custom"])))
    assert raw["connectors"] == {"hubblemetrics": {
        "metrics": ["dns:query;ignoreAAAA", "drop", "tcp", "flow", "icmp", "port-distribution"],
        "series_ttl_seconds": 600}}
    assert raw["exporters"]["prometheus/hubble"] == {"endpoint": "0.0.0.0:19965"}
    assert raw["service"]["pipelines"]["metrics/hubble"]["exporters"] == ["prometheus/hubble", "otlp"]
    assert raw["service"]["pipelines"]["logs"]["exporters"] == ["hubblemetrics"]
    parse_config(raw, env={"NODE_NAME": "node-1"})
    # No handler: off, like Retina's empty hubble.metrics.enabled.
    off = render(chart, {"agent": {"hubble": {"enabled": True, "metrics": {"enabled": []}}}})
    assert "hubble" not in agent_config_text(off)
    assert [p["name"] for p in by_kind(off, "Service")[0]["spec"]["ports"]] == ["metrics"]
    with pytest.raises(Exception, match=r"agent\.hubble\.enabled needs agent\.podLevel"):
        render(chart, {"agent": {"podLevel": False, "hubble": {"enabled": True}}})


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    return {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}


def test_operator_rbac_least_privilege(chart: Any) -> None:
    docs = render(chart, {})
    (role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-operator")]
    granted = grants(role)
    assert ("apiextensions.k8s.io", "customresourcedefinitions") not in granted
    assert ("retina.sh", "retinaendpoints") not in granted  # local context: no RetinaEndpoints
    assert granted[("batch", "jobs")] == {"get", "list", "watch", "create", "delete"}
    assert granted[("", "secrets")] == {"get"}  # by name only: no list (every Secret), no delete (GC does)
    assert "delete" not in granted[("retina.sh", "captures")]
    # Leader election (on by default): the cluster-wide peering object only, never deleted.
    assert granted[("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "create", "patch"}
    assert ("kopf.dev", "kopfpeerings") not in granted
    assert not by_kind(docs, "Role")
    (role,) = [d for d in by_kind(render(chart, CASES["operator-no-leader-election"]), "ClusterRole")
               if d["metadata"]["name"].endswith("-operator")]
    assert not any(g == "kopf.dev" for g, _ in grants(role))
    docs = render(chart, CASES["operator-installs-crds"])
    (role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-operator")]
    granted = grants(role)
    assert "create" in granted[("apiextensions.k8s.io", "customresourcedefinitions")]
    assert granted[("retina.sh", "retinaendpoints")] >= {"create", "update", "delete"}
    # With capture namespaces listed, Secrets are reachable only through Roles there.
    docs = render(chart, CASES["operator-capture-namespaces"])
    (role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-operator")]
    assert ("", "secrets") not in grants(role)
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["default", "shop"]
    assert all(r["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}] for r in roles)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_role_lists_or_deletes_secrets(chart: Any, case: str) -> None:
    """In no values case may any Role or ClusterRole of the chart list, watch or delete Secrets: `list`
    would let the operator read every Secret it can reach."""
    docs = render(chart, CASES[case])
    for role in [*by_kind(docs, "ClusterRole"), *by_kind(docs, "Role")]:
        for rule in role["rules"]:
            if "" in rule["apiGroups"] and ("secrets" in rule["resources"] or "*" in rule["resources"]):
                assert not {"list", "watch", "delete", "deletecollection", "*"} & set(rule["verbs"]), (
                    case, role["metadata"]["name"], rule)


def test_operator_deployment(chart: Any) -> None:
    docs = render(chart, CASES["operator-capture-namespaces"])
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    # Leader election is on by default: a new pod may start before the old one stops.
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["operator"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RETINA_CAPTURE_IMAGE"] == container["image"]
    assert env["RETINA_CAPTURE_JOB_NUM_LIMIT"] == "5"
    assert env["RETINA_INSTALL_CRDS"] == "false" and env["RETINA_ENDPOINTS"] == "false"
    assert env["RETINA_OPERATOR_LIVENESS"] == "http://0.0.0.0:8080/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert env["RETINA_OPERATOR_PEERING"] == f"{RELEASE}-retina-otel-{NAMESPACE}"
    assert env["RETINA_OPERATOR_PEERING_LIFETIME"] == "60"
    pod_id = next(e for e in container["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert not by_kind(render(chart, CASES["operator-off"]), "Deployment")


def test_operator_replicas_with_leader_election(chart: Any) -> None:
    (dep,) = by_kind(render(chart, CASES["operator-ha"]), "Deployment")
    assert dep["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RETINA_OPERATOR_PEERING"] == "retina" and env["RETINA_OPERATOR_PEERING_LIFETIME"] == "30"
    # Without leader election: one replica at most, never two at once (Recreate), no peering env.
    (dep,) = by_kind(render(chart, CASES["operator-no-leader-election"]), "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {"RETINA_OPERATOR_PEERING", "RETINA_OPERATOR_PEERING_LIFETIME", "POD_ID"} & set(env)


def test_chart_ships_the_peering_crds(chart: Any) -> None:
    names = {d["metadata"]["name"] for d in crd_docs(chart)}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "captures.retina.sh"} <= names


def test_operator_env_matches_its_flags() -> None:
    """The env names the chart sets are the defaults `retina-otel operator` reads."""
    import argparse

    parser = argparse.ArgumentParser()
    env = {"RETINA_CAPTURE_IMAGE": "img:1", "RETINA_CAPTURE_JOB_NUM_LIMIT": "5", "RETINA_ENDPOINTS": "true",
           "RETINA_INSTALL_CRDS": "true", "RETINA_OPERATOR_LIVENESS": "http://0.0.0.0:8080/healthz",
           "RETINA_CAPTURE_HOST_PATH_BASE": "/var/log/x", "RETINA_OPERATOR_PEERING": "ro-retina-otel-retina",
           "RETINA_OPERATOR_PEERING_LIFETIME": "30"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        run.add_operator_arguments(parser)
    args = parser.parse_args([])
    assert (args.capture_image, args.job_num_limit) == ("img:1", 5)
    assert args.retina_endpoints is True and args.install_crds is True
    assert args.liveness_endpoint == env["RETINA_OPERATOR_LIVENESS"]
    assert args.host_path_base == "/var/log/x"
    assert args.peering == "ro-retina-otel-retina" and args.peering_lifetime == 30


def test_monitors_and_service(chart: Any) -> None:
    (svc,) = by_kind(render(chart, {}), "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 10093, "targetPort": "metrics", "protocol": "TCP"}]
    assert not by_kind(render(chart, {}), "ServiceMonitor")
    (sm,) = by_kind(render(chart, CASES["service-monitor"]), "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    docs = render(chart, CASES["pod-monitor-no-service"])
    assert not by_kind(docs, "Service")
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_service_monitor_without_service_fails(chart: Any) -> None:
    values = {"agent": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(helm.HelmError, match=r"needs agent\.service\.enabled"):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def test_dashboards_configmaps(chart: Any) -> None:
    docs = render(chart, CASES["dashboards"])
    cms = [d for d in by_kind(docs, "ConfigMap") if "-dashboard-" in d["metadata"]["name"]]
    files = sorted(p.stem for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(cm["metadata"]["name"].rsplit("-dashboard-", 1)[1] for cm in cms) == files
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Network"}


# -- the values schema rejects bad values with a clear message ----------------------------------------

BAD_VALUES = [
    ({"agent": {"dataAggregationLevel": "medium"}}, r"/agent/dataAggregationLevel.*one of 'low', 'high'"),
    ({"agent": {"dataSamplingRate": -1}}, r"/agent/dataSamplingRate.*minimum"),
    ({"agent": {"dataSamplingRate": 0.5}}, r"/agent/dataSamplingRate"),
    ({"agent": {"otlp": {"enabled": True}}}, r"/agent/otlp/endpoint"),
    ({"agent": {"otlp": {"protocol": "http"}}}, r"/agent/otlp/protocol"),
    ({"agent": {"otlp": {"headers": [{"name": "authorization", "value": "Bearer x"}]}}}, r"/agent/otlp/headers/0"),
    ({"agent": {"metricsPort": 70000}}, r"/agent/metricsPort"),
    ({"agent": {"capabilities": ["SYS_MODULE"]}}, r"/agent/capabilities/0"),
    ({"agent": {"receivers": {"packetparser": {"enable": True}}}}, r"/agent/receivers/packetparser"),
    ({"agent": {"unknown": 1}}, r"additional properties 'unknown' not allowed"),
    ({"operator": {"replicas": 3, "leaderElection": {"enabled": False}}}, r"/operator/replicas.*maximum"),
    ({"operator": {"replicas": 11}}, r"/operator/replicas.*maximum"),
    ({"operator": {"leaderElection": {"lifetime": 1}}}, r"/operator/leaderElection/lifetime.*minimum"),
    ({"operator": {"leaderElection": {"peeringName": "Bad_Name"}}}, r"/operator/leaderElection/peeringName"),
    ({"operator": {"leaderElection": {"enable": True}}}, r"/operator/leaderElection"),
    ({"operator": {"captureNamespaces": ["Bad_NS"]}}, r"/operator/captureNamespaces/0"),
    ({"image": {"pullPolicy": "Sometimes"}}, r"/image/pullPolicy"),
    ({"clusterName": "prod eu"}, r"/clusterName"),
    ({"agent": {"receivers": {"tcplatency": {"enable": False}}}}, r"/agent/receivers/tcplatency"),
    ({"agent": {"hubble": {"metrics": {"enabled": ["flows"]}}}}, r"/agent/hubble/metrics/enabled/0"),
    ({"agent": {"hubble": {"metrics": {"port": 0}}}}, r"/agent/hubble/metrics/port.*minimum"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_schema_rejects_bad_values(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    assert re.search(message, str(info.value)), str(info.value)
    with pytest.raises(helm.HelmError):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def test_schema_covers_every_default_value(chart: Any) -> None:
    """Every key in values.yaml is declared in the schema (so the README and schema stay complete)."""
    schema = chart.schema

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            assert key in node.get("properties", {}), f"{path}{key} is not in values.schema.json"
            child = node["properties"][key]
            if isinstance(value, dict) and child.get("additionalProperties") is False:
                walk(value, child, f"{path}{key}.")

    walk(chart.values, schema, "")


def test_readme_documents_every_value(chart: Any) -> None:
    readme = (CHART / "README.md").read_text()

    def leaves(values: dict[str, Any], node: dict[str, Any], path: str) -> Iterator[str]:
        for key, value in values.items():
            child = node["properties"][key]
            if isinstance(value, dict) and value and child.get("additionalProperties") is False:
                yield from leaves(value, child, f"{path}{key}.")
            else:
                yield f"{path}{key}"

    undocumented = [k for k in leaves(chart.values, chart.schema, "") if f"`{k}`" not in readme]
    assert not undocumented, f"values missing from charts/retina-otel/README.md: {undocumented}"


def test_packetparser_writes_event_records_only_while_a_client_follows_or_flow_logs_go_out(chart: Any) -> None:
    """The chart's default keeps the observer (live flows, Hubble's Observer API), which reads each record
    only while a client follows: packetparser switches to Retina's rule then (events on demand) and uses
    the close rule otherwise. With the observer off and no OTLP flow logs the records reach only
    flowmetrics (through k8sattributes and tcplatency): the close rule. OTLP flow logs or
    ``eventRecords: always``: Retina's rule all the time. The tcplatency processor, whose RTT fields only
    the observer reads by default, joins only while a client follows too."""
    from retina_otel.service import Agent

    def agent(values: dict[str, Any]) -> Agent:
        return Agent(parse_config(yaml.safe_load(agent_config_text(render(chart, values))), env={}))

    def rule(values: dict[str, Any]) -> str:
        found = agent(values)
        if "packetparser" in found.events_on_demand:
            return "switched"
        return "close" if "packetparser" in found.only_sums else "events"

    otlp = {"enabled": True, "endpoint": "collector.observability:4317", "insecure": True}
    assert rule({}) == "switched"
    default = agent({})
    assert [k.split("@")[0] for k in default.fills_on_demand] == ["tcplatency"]  # RTTs only while followed
    assert rule({"agent": {"observer": {"eventRecords": "always"}}}) == "events"
    assert rule({"agent": {"observer": {"enabled": False}}}) == "close"
    assert rule({"agent": {"otlp": otlp}}) == "events"
    assert rule({"agent": {"observer": {"enabled": False}, "otlp": otlp}}) == "events"
