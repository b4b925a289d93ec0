"""Buffered flow records as Hubble ``flow.Flow`` messages (only for records a client asked for).

What the record has and Hubble's Flow has a field for goes there (time, verdict, IPs, L4 with TCP
flags or ICMP type/code, both endpoints with namespace, pod, labels and workload, services, node,
is_reply, traffic direction, observation point, interface, DNS as L7). The rest (the kernel's drop
reason, packet and byte counts, retransmissions) goes in ``Flow.extensions`` as
``retina_otel.observer.v1.FlowMetadata``: Hubble's own place for additions, where Retina puts its
metadata too. ``drop_reason_desc`` holds Cilium datapath codes: a drop gets the one Retina gives the
same drop (a netfilter rule drop is POLICY_DENIED, :data:`mapping.DROP_REASON_DESC`), any other
kernel reason DROP_REASON_UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from google.protobuf import any_pb2, timestamp_pb2

from retina_otel.exporters.observer import mapping
from retina_otel.exporters.observer.ring import RingView
from retina_otel.flows import STRINGS, Event, TcpFlag, Verdict, bytes_to_ip
from retina_otel.flowschema import (
    K8S_NAMESPACE,
    K8S_POD_LABEL_PREFIX,
    K8S_POD_NAME,
    K8S_SERVICE_NAME,
    K8S_WORKLOAD_KIND,
    K8S_WORKLOAD_NAME,
)
from retina_otel.hubble import flow_pb2, observer_pb2, retina_pb2

__all__ = ["EVENT_NAMES", "flows", "lost_event", "timestamp"]

EVENT_NAMES = {Event.FLOW: "flow", Event.DROP: "drop", Event.RETRANSMIT: "retransmit", Event.DNS: "dns"}
_FLAG_NAMES = [f.name for f in TcpFlag]
_VERDICT = {Verdict.FORWARDED: flow_pb2.FORWARDED, Verdict.DROPPED: flow_pb2.DROPPED}


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _endpoint(entry: Mapping[str, Any] | None) -> flow_pb2.Endpoint | None:
    if entry is None:
        return None
    labels = [
        f"{key[len(K8S_POD_LABEL_PREFIX) :]}={value}"
        for key, value in entry.items()
        if key.startswith(K8S_POD_LABEL_PREFIX)
    ]
    endpoint = flow_pb2.Endpoint(
        namespace=str(entry.get(K8S_NAMESPACE) or ""), pod_name=str(entry.get(K8S_POD_NAME) or ""), labels=labels
    )
    if entry.get(K8S_WORKLOAD_NAME):
        endpoint.workloads.add(name=str(entry[K8S_WORKLOAD_NAME]), kind=str(entry.get(K8S_WORKLOAD_KIND) or ""))
    return endpoint


def _service(entry: Mapping[str, Any] | None) -> flow_pb2.Service | None:
    if entry is None or not entry.get(K8S_SERVICE_NAME):
        return None
    return flow_pb2.Service(name=str(entry[K8S_SERVICE_NAME]), namespace=str(entry.get(K8S_NAMESPACE) or ""))


def _dns(entry: Mapping[str, Any] | None, row: Mapping[str, Any]) -> flow_pb2.Layer7:
    entry = entry or {}
    answers = [str(a) for a in entry.get("answers") or ()]
    query_type = entry.get("query_type") or ""
    dns = flow_pb2.DNS(
        query=str(entry.get("query") or ""),
        ips=[a for a in answers if _is_ip(a)],
        cnames=[a for a in answers if not _is_ip(a)],
        rcode=int(row["dns_rcode"]),
        qtypes=[str(query_type)] if query_type else [],
        observation_source="retina-otel",
    )
    response = bool(row["dns_is_response"])
    return flow_pb2.Layer7(
        type=flow_pb2.RESPONSE if response else flow_pb2.REQUEST,
        latency_ns=int(row["dns_latency_us"]) * 1000 if response else 0,
        dns=dns,
    )


def _is_ip(text: str) -> bool:
    return (text.count(".") == 3 and text.replace(".", "").isdigit()) or ":" in text


def _metadata(row: Mapping[str, Any], event: int, proto: int) -> any_pb2.Any:
    metadata = retina_pb2.FlowMetadata(
        event=EVENT_NAMES.get(Event(event), "") if event else "",
        drop_reason=STRINGS.name(int(row["drop_reason"])),
        packets=int(row["packets"]),
        bytes=int(row["bytes"]),
        reply_packets=int(row["reply_packets"]),
        reply_bytes=int(row["reply_bytes"]),
        retransmits=int(row["retransmits"]),
        start_time_unix_nano=int(row["time_start_ns"]),
    )
    if proto == 6:
        for name, count in zip(_FLAG_NAMES, list(row["tcp_flags"]), strict=True):
            if count:
                metadata.tcp_flag_counts[name] = int(count)
    extension = any_pb2.Any()
    extension.Pack(metadata)
    return extension


_BLANK = {
    "source.address": (("src_ip", b""),),
    "destination.address": (("dst_ip", b""),),
    "retina.drop.reason": (("drop_reason", 0),),
    "retina.flow.packets": (("packets", 0), ("reply_packets", 0)),
    "retina.flow.bytes": (("bytes", 0), ("reply_bytes", 0)),
    "network.interface.index": (("ifindex", 0),),
}
_PORTS = {"source.port": "src_port", "destination.port": "dst_port"}
_DNS_KEYS = {"dns.question.name": "query", "dns.answers": "answers"}


def _hide(
    row: dict[str, Any], entry: Mapping[str, Any] | None, hidden: frozenset[str]
) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
    """The row and DNS entry without what the batch's field masks removed (blank, as if not recorded)."""
    for name in hidden:
        for column, blank in _BLANK.get(name, ()):
            row[column] = blank
        if name in _PORTS and int(row["proto"]) in (6, 17, 132):  # ICMP keeps its type and code
            row[_PORTS[name]] = 0
        if name in _DNS_KEYS and entry is not None:
            entry = {k: v for k, v in entry.items() if k != _DNS_KEYS[name]}
    return row, entry


def lost_event(count: int, node_name: str, now_ns: int) -> observer_pb2.GetFlowsResponse:
    return observer_pb2.GetFlowsResponse(
        lost_events=flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=count),
        node_name=node_name,
        time=timestamp(now_ns),
    )


_COLUMNS = (
    "time_start_ns",
    "time_end_ns",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "proto",
    "ip_version",
    "direction",
    "verdict",
    "event",
    "is_reply",
    "ifindex",
    "drop_reason",
    "packets",
    "bytes",
    "reply_packets",
    "reply_bytes",
    "retransmits",
    "dns_rcode",
    "dns_is_response",
    "dns_latency_us",
)
_VERDICT_OF = {int(k): v for k, v in _VERDICT.items()}


def flows(view: RingView, node_name: str, metadata: bool = True) -> Iterator[observer_pb2.GetFlowsResponse]:
    """One response per row of ``view``; ``metadata``: with ``Flow.extensions`` (FlowMetadata), which only
    retina-otel's clients ask for (a client that cannot resolve the type could not print the flow as JSON).

    Columns are read once per call (``tolist``) and what rows share is built once (endpoints and services
    per table entry, TCP flag sets, address strings); each row then costs one message filled in place."""
    records = view.records
    n = len(records)
    if not n:
        return
    cols = {name: records[name].tolist() for name in _COLUMNS}
    counts = records["tcp_flags"].tolist()
    seen = mapping.tcp_flags_seen(records)
    bits = np.zeros(n, dtype=np.int32)
    for k, name in enumerate(mapping.HUBBLE_TCP_FLAGS):
        bits |= seen[name].astype(np.int32) << k
    flag_bits = bits.tolist()
    points = mapping.trace_points(records).tolist()
    types, subtypes = mapping.event_types(records)
    types_list, subtypes_list = types.tolist(), subtypes.tolist()
    src_index, dst_index = records["src_endpoint"].tolist(), records["dst_endpoint"].tolist()
    table_ids = view.table_ids.tolist()
    addresses: dict[bytes, str] = {b"": ""}
    flag_sets: dict[int, flow_pb2.TCPFlags] = {}
    ends: dict[tuple[int, str, int], tuple[flow_pb2.Endpoint | None, flow_pb2.Service | None]] = {}

    def address(raw: bytes) -> str:
        text = addresses.get(raw)
        if text is None:
            text = addresses[raw] = str(bytes_to_ip(raw))
        return text

    def tcp_flags(value: int) -> flow_pb2.TCPFlags:
        found = flag_sets.get(value)
        if found is None:
            found = flag_sets[value] = flow_pb2.TCPFlags(
                **{name: bool(value >> k & 1) for k, name in enumerate(mapping.HUBBLE_TCP_FLAGS)}
            )
        return found

    def end(i: int, side: str, index: int) -> tuple[flow_pb2.Endpoint | None, flow_pb2.Service | None]:
        key = (table_ids[i], side, index)
        found = ends.get(key)
        if found is None:
            entry = view.endpoint(i, side)
            found = ends[key] = (_endpoint(entry), _service(entry))
        return found

    for i in range(n):
        row = {name: cols[name][i] for name in _COLUMNS}
        dns_entry = view.dns[i]
        context = view.context(i)
        if context is not None and context.hidden:
            row, dns_entry = _hide(row, dns_entry, context.hidden)
        end_ns = row["time_end_ns"] or row["time_start_ns"]
        seconds, nanos = divmod(end_ns, 1_000_000_000)
        event, proto, ip_version = row["event"], row["proto"], row["ip_version"]
        response = observer_pb2.GetFlowsResponse(node_name=node_name)
        response.time.seconds, response.time.nanos = seconds, nanos
        flow = response.flow
        flow.time.seconds, flow.time.nanos = seconds, nanos
        flow.verdict = _VERDICT_OF.get(row["verdict"], flow_pb2.VERDICT_UNKNOWN)
        if ip_version in (4, 6):  # a non-IP record (dropreason: an ARP or other frame dropped) has no IP
            flow.IP.source = address(row["src_ip"])
            flow.IP.destination = address(row["dst_ip"])
            flow.IP.ipVersion = flow_pb2.IPv6 if ip_version == 6 else flow_pb2.IPv4
        sport, dport = row["src_port"], row["dst_port"]
        if proto == 6:
            flow.l4.TCP.source_port, flow.l4.TCP.destination_port = sport, dport
            flow.l4.TCP.flags.CopyFrom(tcp_flags(flag_bits[i]))
        elif proto == 17:
            flow.l4.UDP.source_port, flow.l4.UDP.destination_port = sport, dport
        elif proto == 132:
            flow.l4.SCTP.source_port, flow.l4.SCTP.destination_port = sport, dport
        elif proto == 1 and ip_version == 4:
            flow.l4.ICMPv4.type, flow.l4.ICMPv4.code = sport, dport
        elif proto == 58:
            flow.l4.ICMPv6.type, flow.l4.ICMPv6.code = sport, dport
        for side, index, endpoint_field, service_field in (
            ("src", src_index[i], flow.source, flow.source_service),
            ("dst", dst_index[i], flow.destination, flow.destination_service),
        ):
            if index >= 0:
                endpoint, service = end(i, side, index)
                if endpoint is not None:
                    endpoint_field.CopyFrom(endpoint)
                if service is not None:
                    service_field.CopyFrom(service)
        flow.Type = flow_pb2.L7 if event == Event.DNS else flow_pb2.L3_L4
        flow.node_name = node_name
        flow.event_type.type, flow.event_type.sub_type = types_list[i], subtypes_list[i]
        if event == Event.DROP:
            desc = mapping.drop_reason_desc(row["drop_reason"])
            flow.drop_reason_desc, flow.event_type.sub_type = flow_pb2.DropReason.ValueType(desc), desc
        flow.traffic_direction = row["direction"]
        flow.trace_observation_point = points[i]
        flow.is_reply.value = bool(row["is_reply"])
        ifindex = row["ifindex"]
        if ifindex:
            flow.interface.index, flow.interface.name = ifindex, mapping.interface_name(ifindex)
        if event == Event.DNS:
            flow.l7.CopyFrom(_dns(dns_entry, row))
        if metadata:
            row["tcp_flags"] = counts[i]
            flow.extensions.CopyFrom(_metadata(row, event, proto))
        yield response
