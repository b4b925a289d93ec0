"""TracesConfiguration: the operator's verdicts (Accepted / Errored with the reason), the agent's merge of
every Accepted object, and target compilation against pods."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from retina_otel.controller.configs import reconcile_traces_configurations
from retina_otel.controller.kube import TRACES_CONFIGS, KubeClient
from retina_otel.crds.models import SpecError, TracesConfigurationSpec, validate_spec
from retina_otel.flows import ip_to_bytes
from retina_otel.testing_k8s import EmulatedCluster
from retina_otel.traces.targets import CLASS_ENDPOINT, CLASS_NETWORK, PodView, compile_targets
from retina_otel.traces.watch import select_traces_configurations

OUTPUT = {"destination": "opentelemetry"}


def spec(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"traceConfiguration": list(entries), "outputConfiguration": OUTPUT}


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"captureLevel": "FirstPacket"}, "traceTargets is empty: this entry traces nothing"),
        ({"captureLevel": "FirstPacket", "traceTargets": [{"from": {}}]}, "from: targets nothing"),
        ({"captureLevel": "FirstPacket", "traceTargets": [{"to": {"ipBlock": {"cidr": "10.0.0.0/33"}}}]},
         "is not an IP network"),
        ({"captureLevel": "Sometimes", "traceTargets": [{}]}, "captureLevel"),
        ({"captureLevel": "FirstPacket", "traceTargets": [{"ports": [{"port": "http"}]}]},
         r"ports\[0\]\.port: 'http' is not a port number \(1-65535; named ports are not resolved"),
        ({"captureLevel": "FirstPacket", "traceTargets": [{"ports": [{"port": "9000", "endPort": "80"}]}]},
         "endPort 80 is below port 9000"),
        ({"captureLevel": "FirstPacket", "traceTargets": [{"to": {"serviceSelector": {"matchLabels": {"a": "b"}}}}]},
         "to: serviceSelector: not evaluated by retina-otel's agent"),
        ({"captureLevel": "FirstPacket", "traceTargets": [{"from": {
            "podSelector": {"matchLabels": {"a": "b"}}, "nodeSelector": {"matchLabels": {"pool": "x"}}}}]},
         "from: nodeSelector: not evaluated"),
    ],
)  # fmt: skip
def test_invalid_or_empty_targets_are_errors_naming_the_field(entry: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError, match=words) as caught:
        validate_spec(TracesConfigurationSpec, spec(entry))
    assert "spec.traceConfiguration[0]" in str(caught.value)


@pytest.fixture
def kube() -> Iterator[KubeClient]:
    with EmulatedCluster() as cluster:
        client = KubeClient.from_options(api_url=cluster.url)
        try:
            yield client
        finally:
            client.close()


def test_operator_accepts_valid_objects_and_errors_the_rest(kube: KubeClient) -> None:
    good = spec({"captureLevel": "FirstPacket", "traceTargets": [{"to": {"podSelector": {"matchLabels": {"a": "b"}}}}]})
    for name, body in (("good", good), ("empty", spec({"captureLevel": "AllPackets", "traceTargets": []}))):
        kube.create(TRACES_CONFIGS, {"apiVersion": "retina.sh/v1alpha1", "kind": "TracesConfiguration",
                                     "metadata": {"name": name}, "spec": body})  # fmt: skip
    reconcile_traces_configurations(kube)
    status = {o["metadata"]["name"]: o.get("status") or {} for o in kube.list(TRACES_CONFIGS)}
    assert status["good"]["state"] == "Accepted"
    assert status["empty"]["state"] == "Errored" and "traces nothing" in status["empty"]["reason"]


def test_agent_merges_every_accepted_object() -> None:
    def obj(state: str, level: str) -> dict[str, Any]:
        return {"status": {"state": state}, "spec": spec({"captureLevel": level, "traceTargets": [{}]})}

    name, merged = select_traces_configurations(
        {"b": obj("Accepted", "AllPackets"), "a": obj("Accepted", "FirstPacket"), "c": obj("Errored", "FirstPacket")}
    )
    assert name == "a,b"
    assert merged is not None
    assert [e["captureLevel"] for e in merged["traceConfiguration"]] == ["FirstPacket", "AllPackets"]
    assert select_traces_configurations({"c": obj("Errored", "FirstPacket")}) == (None, None)


def test_targets_by_selectors_ports_and_trace_points() -> None:
    from retina_otel.crds.models import TraceConfiguration

    pods = [
        PodView({"app": "web"}, {"team": "shop"}, (ip_to_bytes("198.18.0.1"),)),
        PodView({"app": "web"}, {"team": "other"}, (ip_to_bytes("198.18.0.2"),)),
        PodView({"app": "db"}, {"team": "shop"}, (ip_to_bytes("198.18.0.3"),)),
    ]
    entry = TraceConfiguration.model_validate({
        "captureLevel": "AllPackets",
        "includeLayer7Data": True,
        "traceTargets": [{
            "to": {"podSelector": {"matchLabels": {"app": "web"}},
                   "namespaceSelector": {"matchLabels": {"team": "shop"}}},
            "ports": [{"port": "8080", "protocol": "TCP"}],
            "tracePoints": ["NodeToNetwork"],
        }],
    })  # fmt: skip
    targets = compile_targets([entry], pods)
    to = np.array([ip_to_bytes(a) for a in ("198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.1", "198.18.0.1")],
                  dtype="V16")  # fmt: skip
    src = np.array([ip_to_bytes("203.0.113.9")] * 5, dtype="V16")
    port = np.array([8080, 8080, 8080, 8081, 8080], dtype=np.uint16)
    proto = np.full(5, 6, dtype=np.uint8)
    classes = np.array([CLASS_NETWORK] * 4 + [CLASS_ENDPOINT], dtype=np.uint8)
    match = targets.match(src, to, port, proto, classes)
    assert match.traced.tolist() == [True, False, False, False, False]
    assert match.all_packets.tolist() == match.l7.tolist() == match.traced.tolist()


def test_a_target_whose_only_ports_cannot_be_resolved_matches_nothing_not_every_port() -> None:
    """The model rejects named ports; should one reach the compiler anyway (a model built without
    validation), its target must not fall back to "any port"."""
    from retina_otel.crds.models import TraceConfiguration
    from retina_otel.crds.models.configs import TracePorts, TraceTargets

    named = TraceTargets.model_construct(
        from_=None, to=None, ports=[TracePorts.model_construct(port="http", protocol="TCP", end_port=None)],
        trace_points=[],
    )  # fmt: skip
    entry = TraceConfiguration.model_construct(capture_level="FirstPacket", include_layer7_data=False,
                                               trace_targets=[named])  # fmt: skip
    warnings: list[str] = []
    targets = compile_targets([entry], warn=warnings.append)
    addr = np.array([ip_to_bytes("198.18.0.1")], dtype="V16")
    match = targets.match(addr, addr, np.array([80], dtype=np.uint16), np.array([6], dtype=np.uint8), None)
    assert match.traced.tolist() == [False] and any("named ports" in w for w in warnings)
