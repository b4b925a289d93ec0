"""How ``retina-otel observe`` prints flows: ``compact`` (one line per flow, as hubble observe does),
``json`` (one GetFlowsResponse per line, protobuf's JSON form with the proto field names, as hubble
prints it) and ``table`` (aligned columns)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TextIO

from google.protobuf import json_format

from retina_otel.dnsnames import rcode_name
from retina_otel.hubble import flow_pb2, observer_pb2, retina_pb2

__all__ = ["Printer", "endpoint_text", "metadata", "summary"]

_POINTS = {
    flow_pb2.FROM_ENDPOINT: "from-endpoint",
    flow_pb2.TO_ENDPOINT: "to-endpoint",
    flow_pb2.FROM_NETWORK: "from-network",
    flow_pb2.TO_NETWORK: "to-network",
}
_ICMP4 = {0: "EchoReply", 3: "DestinationUnreachable", 8: "EchoRequest", 11: "TimeExceeded"}
_ICMP6 = {1: "DestinationUnreachable", 3: "TimeExceeded", 128: "EchoRequest", 129: "EchoReply"}


def metadata(flow: flow_pb2.Flow) -> retina_pb2.FlowMetadata:
    """retina-otel's additions to the flow (empty when the server sent none)."""
    out = retina_pb2.FlowMetadata()
    if flow.HasField("extensions"):
        flow.extensions.Unpack(out)
    return out


def _port(flow: flow_pb2.Flow, side: str) -> int:
    l4 = flow.l4
    kind = l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        return int(getattr(getattr(l4, kind), f"{side}_port"))
    return 0


def endpoint_text(flow: flow_pb2.Flow, side: str) -> str:
    """``namespace/pod:port`` when the end is a known pod, else ``ip:port``."""
    endpoint: flow_pb2.Endpoint = getattr(flow, side)
    ip = flow.IP.source if side == "source" else flow.IP.destination
    name = f"{endpoint.namespace}/{endpoint.pod_name}" if endpoint.pod_name else ip or "-"  # "-": not IP
    if not endpoint.pod_name and ":" in name:
        name = f"[{name}]"
    port = _port(flow, side)
    return f"{name}:{port}" if port else name


def summary(flow: flow_pb2.Flow) -> str:
    meta = metadata(flow)
    if flow.l7.HasField("dns"):
        dns = flow.l7.dns
        qtypes = ",".join(dns.qtypes)
        if flow.l7.type == flow_pb2.RESPONSE:
            answers = ",".join([*dns.ips, *dns.cnames])
            return f'DNS Answer "{answers}" RCode: {rcode_name(dns.rcode)} ({dns.query} {qtypes})'.replace(
                '""', "-"
            )
        return f"DNS Query {dns.query} {qtypes}".rstrip()
    kind = flow.l4.WhichOneof("protocol")
    parts: list[str] = []
    if kind == "TCP":
        flags = [
            name
            for name in ("SYN", "ACK", "FIN", "RST", "PSH", "URG", "ECE", "CWR", "NS")
            if getattr(flow.l4.TCP.flags, name)
        ]
        parts.append(f"TCP Flags: {', '.join(flags)}" if flags else "TCP")
    elif kind == "UDP":
        parts.append("UDP")
    elif kind == "ICMPv4":
        parts.append(f"ICMPv4 {_ICMP4.get(flow.l4.ICMPv4.type, flow.l4.ICMPv4.type)}")
    elif kind == "ICMPv6":
        parts.append(f"ICMPv6 {_ICMP6.get(flow.l4.ICMPv6.type, flow.l4.ICMPv6.type)}")
    if meta.retransmits:
        parts.append(f"retransmits: {meta.retransmits}")
    if meta.packets:
        parts.append(f"{meta.packets} pkts, {meta.bytes} B")
    return "; ".join(parts)


def _verdict(flow: flow_pb2.Flow) -> str:
    text = str(flow_pb2.Verdict.Name(flow.verdict))
    if flow.verdict == flow_pb2.DROPPED:
        reason = metadata(flow).drop_reason or flow_pb2.DropReason.Name(flow.drop_reason_desc)
        return f"{text} ({reason})"
    return text


def _time(flow: flow_pb2.Flow) -> str:
    moment = dt.datetime.fromtimestamp(flow.time.seconds + flow.time.nanos / 1e9, tz=dt.UTC)
    return moment.strftime("%b %d %H:%M:%S.%f")[:-3]


def _kind(flow: flow_pb2.Flow) -> str:
    meta = metadata(flow)
    if flow.l7.HasField("dns"):
        return "dns-response" if flow.l7.type == flow_pb2.RESPONSE else "dns-request"
    if meta.event in ("drop", "retransmit"):
        return meta.event
    return _POINTS.get(flow.trace_observation_point, "trace")


def compact_line(flow: flow_pb2.Flow) -> str:
    src, dst = endpoint_text(flow, "source"), endpoint_text(flow, "destination")
    arrow = f"{dst} <- {src}" if flow.is_reply.value else f"{src} -> {dst}"
    text = f"{_time(flow)} [{flow.node_name}]: {arrow} {_kind(flow)} {_verdict(flow)}"
    detail = summary(flow)
    return f"{text} ({detail})" if detail else text


TABLE_COLUMNS = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")


def table_row(flow: flow_pb2.Flow) -> tuple[str, ...]:
    return (
        _time(flow),
        endpoint_text(flow, "source"),
        endpoint_text(flow, "destination"),
        _kind(flow),
        _verdict(flow),
        summary(flow),
    )


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


class Printer:
    """Prints responses as they come; ``table`` is aligned over everything when not following."""

    def __init__(self, output: str, out: TextIO, err: TextIO, follow: bool) -> None:
        self.output = output
        self.out = out
        self.err = err
        self.follow = follow
        self._rows: list[tuple[str, ...]] = []
        self.lost = 0

    def __call__(self, response: observer_pb2.GetFlowsResponse) -> None:
        kind = response.WhichOneof("response_types")
        if self.output == "json":
            # Proto field names (node_name, pod_name, ...), as hubble observe -o json prints them.
            as_dict = json_format.MessageToDict(response, preserving_proto_field_name=True)
            print(json.dumps(as_dict, separators=(",", ":")), file=self.out, flush=True)
            if kind == "lost_events":
                self.lost += int(response.lost_events.num_events_lost)
            return
        if kind == "lost_events":
            lost = response.lost_events
            self.lost += int(lost.num_events_lost)
            source = flow_pb2.LostEventSource.Name(lost.source)
            print(f"EVENTS LOST: {source} {lost.num_events_lost}", file=self.err, flush=True)
            return
        if kind != "flow":
            return
        if self.output == "compact":
            print(compact_line(response.flow), file=self.out, flush=True)
        elif self.follow:
            if not self._rows:
                self._rows.append(TABLE_COLUMNS)
                print("\t".join(TABLE_COLUMNS), file=self.out)
            print("\t".join(table_row(response.flow)), file=self.out, flush=True)
        else:
            self._rows.append(table_row(response.flow))

    def finish(self) -> None:
        if self.output == "table" and not self.follow:
            print(format_table(self._rows, TABLE_COLUMNS), file=self.out, flush=True)
