"""Attribute names of a flow record, and the conversion of batch rows into them.

The names follow OpenTelemetry semantic conventions where one exists (``source.address``,
``network.transport``, ``k8s.pod.name``); Kubernetes metadata of each end is prefixed with
``source.`` or ``destination.`` (``source.k8s.pod.name``). The full table is in
``docs/flow-records.md``; this module is the single place the names are spelled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from retina_otel.flows import (
    STRINGS,
    Direction,
    Event,
    FlowBatch,
    ObservationPoint,
    TcpFlag,
    Verdict,
    bytes_to_ip,
)

__all__ = [
    "ENDPOINT_KEYS",
    "SIDE_PREFIX",
    "interface_names",
    "record_attributes",
    "rows_as_attributes",
]

# Keys of an EndpointTable entry (k8sattributes writes them; flowmetrics and exporters read them).
K8S_NAMESPACE = "k8s.namespace.name"
K8S_POD_NAME = "k8s.pod.name"
K8S_POD_UID = "k8s.pod.uid"
K8S_NODE_NAME = "k8s.node.name"
K8S_WORKLOAD_KIND = "k8s.workload.kind"  # Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, Pod
K8S_WORKLOAD_NAME = "k8s.workload.name"
K8S_SERVICE_NAME = "k8s.service.name"
K8S_POD_LABEL_PREFIX = "k8s.pod.label."  # + label key, only allow-listed labels
ZONE = "cloud.availability_zone"
ENDPOINT_KIND = "retina.endpoint.kind"  # pod | service | node (k8sattributes), network | world (networks)
ENDPOINT_LOCAL = "retina.endpoint.local"  # bool: a pod scheduled on this agent's node
NETWORK_NAME = "network.name"  # the narrowest named CIDR holding the address (networks processor)

ENDPOINT_KEYS = (
    K8S_NAMESPACE,
    K8S_POD_NAME,
    K8S_POD_UID,
    K8S_NODE_NAME,
    K8S_WORKLOAD_KIND,
    K8S_WORKLOAD_NAME,
    K8S_SERVICE_NAME,
    ZONE,
    ENDPOINT_KIND,
    ENDPOINT_LOCAL,
)

SIDE_PREFIX = {"src": "source.", "dst": "destination."}

_TRANSPORT = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp", 132: "sctp"}
_FLAG_NAMES = [f.name for f in TcpFlag]


def _endpoint_attributes(entry: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in entry.items():
        if value is None or value == "":
            continue
        out[prefix + key] = value


def interface_names(batch: FlowBatch) -> list[str]:
    """``network.interface.name`` of every row, resolved for the whole batch at once (cached table of
    this namespace's links, see :mod:`retina_otel.ifnames`); pass ``names[i]`` to :func:`record_attributes`."""
    from retina_otel.ifnames import INTERFACES

    names: list[str] = INTERFACES.names(batch.records["ifindex"]).tolist()
    return names


def record_attributes(batch: FlowBatch, i: int, interface_name: str | None = None) -> dict[str, Any]:
    """The attributes of row ``i`` of ``batch`` as an OTLP log record would carry them.

    ``interface_name``: the row's entry of :func:`interface_names` (callers converting a whole batch
    resolve the names once); None looks the one index up."""
    r = batch.records[i]
    proto = int(r["proto"])
    attrs: dict[str, Any] = {
        "event.name": f"retina.flow.{Event(int(r['event'])).name.lower()}" if r["event"] else "retina.flow",
        "source.address": str(bytes_to_ip(r["src_ip"])),
        "destination.address": str(bytes_to_ip(r["dst_ip"])),
        "network.transport": _TRANSPORT.get(proto, str(proto)),
        "network.type": "ipv6" if int(r["ip_version"]) == 6 else "ipv4",
        "network.io.direction": {1: "receive", 2: "transmit"}.get(int(r["direction"]), "unknown"),
        "retina.flow.direction": Direction(int(r["direction"])).name.lower(),
        "retina.flow.observation_point": ObservationPoint(int(r["observation_point"])).name.lower(),
        "retina.flow.verdict": Verdict(int(r["verdict"])).name.lower(),
        "retina.flow.is_reply": bool(r["is_reply"]),
        "retina.flow.packets": int(r["packets"]),
        "retina.flow.bytes": int(r["bytes"]),
        "retina.flow.reply_packets": int(r["reply_packets"]),
        "retina.flow.reply_bytes": int(r["reply_bytes"]),
        "retina.flow.start_time_unix_nano": int(r["time_start_ns"]),
        "retina.flow.end_time_unix_nano": int(r["time_end_ns"]),
    }
    if proto in (1, 58):
        attrs["retina.icmp.type"] = int(r["src_port"])
        attrs["retina.icmp.code"] = int(r["dst_port"])
    else:
        attrs["source.port"] = int(r["src_port"])
        attrs["destination.port"] = int(r["dst_port"])
    if r["ifindex"]:
        attrs["network.interface.index"] = int(r["ifindex"])
        if interface_name is None:
            from retina_otel.ifnames import INTERFACES

            interface_name = INTERFACES.name(int(r["ifindex"]))
        if interface_name:
            attrs["network.interface.name"] = interface_name
    if proto == 6:
        flags = r["tcp_flags"]
        for name, count in zip(_FLAG_NAMES, flags.tolist(), strict=True):
            if count:
                attrs[f"retina.tcp.flags.{name.lower()}"] = int(count)
    if r["drop_reason"]:
        attrs["retina.drop.reason"] = STRINGS.name(int(r["drop_reason"]))
    if r["retransmits"]:
        attrs["retina.tcp.retransmits"] = int(r["retransmits"])
    if r["srtt_us"]:
        attrs["retina.tcp.srtt_us"] = int(r["srtt_us"])
    if r["handshake_us"]:
        attrs["retina.tcp.handshake_us"] = int(r["handshake_us"])
    if int(r["event"]) == Event.DNS:
        attrs["dns.id"] = int(r["dns_id"])
        attrs["dns.question.type"] = int(r["dns_qtype"])
        attrs["dns.response_code"] = int(r["dns_rcode"])
        attrs["dns.is_response"] = bool(r["dns_is_response"])
        attrs["dns.answer_count"] = int(r["dns_answer_count"])
        if r["dns_latency_us"]:
            attrs["dns.latency_us"] = int(r["dns_latency_us"])
        if batch.dns is not None and batch.dns[i] is not None:
            extra = batch.dns[i]
            assert extra is not None
            if extra.get("query") is not None:
                attrs["dns.question.name"] = extra["query"]
            if extra.get("answers"):
                attrs["dns.answers"] = list(extra["answers"])
            if extra.get("query_type"):
                attrs["dns.question.type_name"] = extra["query_type"]
            if extra.get("return_code"):
                attrs["dns.response_code_name"] = extra["return_code"]
    entries = batch.endpoints.entries
    for side in ("src", "dst"):
        index = int(r[f"{side}_endpoint"])
        if 0 <= index < len(entries):
            _endpoint_attributes(entries[index], SIDE_PREFIX[side], attrs)
    for mask in batch.masks:
        attrs = mask.apply(attrs)
    return attrs


def rows_as_attributes(batch: FlowBatch) -> Iterator[dict[str, Any]]:
    names = interface_names(batch)
    for i in range(len(batch)):
        yield record_attributes(batch, i, names[i])

