"""flowmetrics with the networks processor: flows to world, bytes between zones, the network label."""

from __future__ import annotations

from typing import Any

from retina_otel.component import CreateSettings
from retina_otel.flows import Direction, Event, FlowBatch, ObservationPoint, Verdict
from retina_otel.processors.networks import NetworksConfig, NetworksProcessor
from retina_otel.testing import CollectingConsumer
from tests.test_flowmetrics import IPS, make, processor, row, series

ZONED: list[dict[str, Any]] = [
    {"k8s.pod.name": "a", "k8s.namespace.name": "ns1", "cloud.availability_zone": "z1",
     "retina.endpoint.kind": "pod", "retina.endpoint.local": True},
    {"k8s.pod.name": "b", "k8s.namespace.name": "ns2", "cloud.availability_zone": "z2",
     "retina.endpoint.kind": "pod", "retina.endpoint.local": True},
    {"k8s.pod.name": "c", "k8s.namespace.name": "ns1", "cloud.availability_zone": "z2",
     "retina.endpoint.kind": "pod", "retina.endpoint.local": False},
]


def _networks(batch: FlowBatch) -> None:
    """198.19.0.0/24 is `partner`; 198.19.0.9 (IPS[-1]) is in it, 203.0.113.0/24 is not (world)."""
    config = NetworksConfig.model_validate({"networks": [{"name": "partner", "cidrs": ["198.19.0.0/24"]}]})
    NetworksProcessor(CreateSettings("networks", "processor"), config, CollectingConsumer()).decorate(batch)


def _world_batch() -> FlowBatch:
    IPS[-2] = "203.0.113.7"
    batch = make(6, ZONED)
    row(batch, 0, 0, -2, packets=5, bytes=500, observation_point=ObservationPoint.FROM_ENDPOINT)  # a -> world
    row(batch, 1, -2, 0, packets=4, bytes=400, is_reply=1, direction=Direction.INGRESS,
        observation_point=ObservationPoint.TO_ENDPOINT)  # the reply: not counted
    row(batch, 2, 0, -1, packets=3, bytes=300, observation_point=ObservationPoint.FROM_ENDPOINT)  # a -> partner
    row(batch, 3, 1, -2, proto=17, dport=53, packets=2, bytes=200, event=Event.DROP, verdict=Verdict.DROPPED,
        observation_point=ObservationPoint.FROM_ENDPOINT)  # b -> world, dropped
    row(batch, 4, 0, 2, packets=7, bytes=700, observation_point=ObservationPoint.FROM_ENDPOINT)  # a -> c (z1 -> z2)
    row(batch, 5, 1, 2, packets=1, bytes=100, observation_point=ObservationPoint.FROM_ENDPOINT)  # b -> c (z2 -> z2)
    _networks(batch)
    return batch


def test_flows_to_world_counts_non_reply_flows_leaving_the_cluster() -> None:
    proc, host = processor(
        {"remote_context": True, "metrics": [{"metric_name": "flows_to_world", "source_labels": ["podname"],
                                              "destination_labels": ["port"]}]}
    )
    proc.consume_flows(_world_batch())
    assert series(host, "adv_flows_to_world_count") == {
        ("TCP", "FORWARDED", "a", "80"): 5.0,
        ("UDP", "DROPPED", "b", "53"): 2.0,
    }


def test_zone_bytes_and_the_network_label() -> None:
    proc, host = processor(
        {
            "remote_context": True,
            "metrics": [
                {"metric_name": "zone_bytes"},
                {"metric_name": "forward_bytes", "source_labels": ["podname"], "destination_labels": ["network"]},
            ],
        }
    )
    proc.consume_flows(_world_batch())
    assert series(host, "adv_zone_bytes") == {
        ("z1", "unknown"): 800.0,  # a -> world and a -> partner: no zone
        ("z1", "z2"): 700.0,
        ("z2", "z2"): 100.0,
        ("unknown", "z1"): 400.0,
    }
    forward = series(host, "adv_forward_bytes")
    assert forward[("egress", "a", "world")] == 500.0
    assert forward[("egress", "a", "partner")] == 300.0
    assert forward[("egress", "a", "unknown")] == 700.0  # a cluster pod: in no named network


def test_local_context_network_label() -> None:
    proc, host = processor({"metrics": [{"metric_name": "forward_count", "source_labels": ["podname", "network"]}]})
    batch = make(1, ZONED)
    row(batch, 0, 0, -1, packets=3, observation_point=ObservationPoint.FROM_ENDPOINT)
    config = NetworksConfig.model_validate({"networks": [{"name": "pods", "cidrs": ["198.18.0.0/24"]}]})
    NetworksProcessor(CreateSettings("networks", "processor"), config, CollectingConsumer()).decorate(batch)
    proc.consume_flows(batch)
    assert series(host, "adv_forward_count") == {("egress", "a", "pods"): 3.0}
