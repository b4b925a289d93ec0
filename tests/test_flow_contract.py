"""packetparser's flow records through flowmetrics: each packet counts once per pod.

1. **Two observation points.** A packet from pod client to pod server on the same node crosses
   client's host veth (packetparser: FROM_ENDPOINT, direction EGRESS) and server's host veth
   (TO_ENDPOINT, INGRESS), so packetparser reports it in two rows with the same src/dst. Local context
   counts a FROM_ENDPOINT row only for its source pod (egress) and a TO_ENDPOINT row only for its
   destination pod (ingress) (Retina counts each flow once as egress at its source and once as ingress at
   its destination).
2. **The reply direction.** packetparser's kernel program adds every packet to its own direction's
   counters and to the opposite direction's ``rev_packets``/``rev_bytes``, and each direction is
   reported in its own rows; flowmetrics never adds the reply columns (they are informational).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retina_otel.component import CreateSettings
from retina_otel.flows import Direction, EndpointTable, Event, FlowBatch, ObservationPoint, Verdict, ip_to_bytes
from retina_otel.processors.flowmetrics import FACTORY, FlowMetricsConfig, FlowMetricsProcessor
from retina_otel.testing import TestHost

P = "networkobservability_"
CLIENT, SERVER = "198.18.0.1", "198.18.0.2"
ENTRIES: list[dict[str, Any]] = [
    {
        "k8s.pod.name": "client",
        "k8s.namespace.name": "ns",
        "retina.endpoint.kind": "pod",
        "retina.endpoint.local": True,
    },
    {
        "k8s.pod.name": "server",
        "k8s.namespace.name": "ns",
        "retina.endpoint.kind": "pod",
        "retina.endpoint.local": True,
    },
]


def forward_counts(batch: FlowBatch, *, remote: bool = False) -> dict[tuple[str, ...], Any]:
    option: dict[str, Any] = {"metricName": "forward_count", "sourceLabels": ["podname"]}
    if remote:
        option["destinationLabels"] = ["podname"]
    proc = FACTORY.create(
        CreateSettings("flowmetrics", "processor"),
        FlowMetricsConfig.model_validate({"remote_context": remote, "metrics": [option]}),
        None,
    )
    assert isinstance(proc, FlowMetricsProcessor)
    host = TestHost()
    proc.start(host)
    batch.endpoints = EndpointTable(entries=ENTRIES)
    ip_slot = {ip_to_bytes(CLIENT): 0, ip_to_bytes(SERVER): 1}
    batch.records["src_endpoint"] = [ip_slot[bytes(v)] for v in batch.records["src_ip"]]
    batch.records["dst_endpoint"] = [ip_slot[bytes(v)] for v in batch.records["dst_ip"]]
    proc.consume_flows(batch)
    family = host.metrics.get(P + "adv_forward_count")
    assert family is not None
    return {labels: value for labels, value, _ in family.snapshot().series}


def test_one_packet_seen_at_two_veths_counts_once_per_pod() -> None:
    batch = FlowBatch.empty(2, receiver="packetparser")
    r = batch.records
    r["src_ip"], r["dst_ip"] = ip_to_bytes(CLIENT), ip_to_bytes(SERVER)
    r["proto"], r["ip_version"], r["event"], r["verdict"] = 17, 4, Event.FLOW, Verdict.FORWARDED
    r["packets"], r["bytes"] = 3, 300
    # What packetparser reports for 3 packets client -> server: one row at each pod's host veth.
    r["observation_point"][0], r["direction"][0], r["ifindex"][0] = ObservationPoint.FROM_ENDPOINT, Direction.EGRESS, 11
    r["observation_point"][1], r["direction"][1], r["ifindex"][1] = ObservationPoint.TO_ENDPOINT, Direction.INGRESS, 12
    assert forward_counts(batch) == {("egress", "client"): 3.0, ("ingress", "server"): 3.0}


def test_request_and_response_at_one_veth_count_once() -> None:
    from retina_otel.receivers.packetparser import records

    # The kernel's two reports at the client's veth for one UDP request and its response (packetparser.bpf.c:
    # the request is added to d[0].packets and d[1].rev_packets; the response's report takes both).
    # The kernel writes direction (from the observation point), verdict and event itself (pp_report.h).
    reports = np.zeros(2, dtype=records.REPORT_DTYPE)
    reports["proto"], reports["ipver"], reports["ifindex"] = 17, 4, 11
    reports["verdict"], reports["event"] = Verdict.FORWARDED, Event.FLOW
    reports["packets"], reports["bytes"] = 1, 100
    reports["src"][0], reports["dst"][0] = ip_to_bytes(CLIENT), ip_to_bytes(SERVER)
    reports["obs"][0], reports["direction"][0] = ObservationPoint.FROM_ENDPOINT, Direction.EGRESS
    reports["src"][1], reports["dst"][1] = ip_to_bytes(SERVER), ip_to_bytes(CLIENT)
    reports["obs"][1], reports["direction"][1] = ObservationPoint.TO_ENDPOINT, Direction.INGRESS
    reports["is_reply"][1], reports["rev_packets"][1], reports["rev_bytes"][1] = 1, 1, 100
    batch = records.reports_to_batch(reports, 0, "packetparser")
    # Two packets crossed the veth, one each way: reply columns are informational (flows.FLOW_DTYPE).
    # At the client's veth they are the client's egress and ingress; the server's come from its own veth.
    assert int(batch.records["packets"].sum()) == 2
    assert forward_counts(batch) == {("egress", "client"): 1.0, ("ingress", "client"): 1.0}


def _sightings(*points: ObservationPoint) -> FlowBatch:
    """3 packets client -> server, one row per place packetparser saw them."""
    batch = FlowBatch.empty(len(points), receiver="packetparser")
    r = batch.records
    r["src_ip"], r["dst_ip"] = ip_to_bytes(CLIENT), ip_to_bytes(SERVER)
    r["proto"], r["ip_version"], r["event"], r["verdict"] = 17, 4, Event.FLOW, Verdict.FORWARDED
    r["packets"], r["bytes"] = 3, 300
    r["observation_point"] = list(points)
    egress = (ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_NETWORK)
    r["direction"] = [Direction.EGRESS if p in egress else Direction.INGRESS for p in points]
    return batch


def test_remote_context_counts_a_packet_once_per_pair() -> None:
    batch = _sightings(ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_ENDPOINT)
    assert forward_counts(batch, remote=True) == {("egress", "client", "server"): 3.0}


def test_host_interface_sightings_of_local_pods_are_not_counted_again() -> None:
    # A pod's packet leaving the node is seen at its veth and at the host interface.
    batch = _sightings(ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_NETWORK)
    assert forward_counts(batch) == {("egress", "client"): 3.0}
    assert forward_counts(_sightings(ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_NETWORK), remote=True) == {
        ("egress", "client", "server"): 3.0
    }
