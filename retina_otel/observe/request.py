"""``retina-otel observe`` filter flags as a Hubble ``GetFlowsRequest``.

The flags build filters the way ``hubble observe`` does: a *left* filter (the source side) and a
*right* one (the destination side). ``--from-*`` flags constrain the source in both, ``--to-*`` the
destination in both, flags about either end (``--pod``, ``--namespace``, ``--ip``, ``--port``) put
the source form in the left filter and the destination form in the right one, and the other flags
(protocol, verdict, ...) go in both. With an either-end flag the request carries both filters (a flow
matches either); without, only the left one. ``--not`` sends the next filter flag to a second
tracker, which becomes the blacklist. Values that Hubble's FlowFilter cannot carry (the kernel's drop
reason, retina-otel's record kinds) go in the request's extension, position by position.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2

from retina_otel.exporters.observer.convert import timestamp
from retina_otel.hubble import flow_pb2, observer_pb2, retina_pb2

__all__ = ["FILTER_FLAGS", "FilterTracker", "add_filter_arguments", "build_request", "parse_time"]

TYPES = ("flow", "drop", "dns", "retransmit")
TCP_FLAGS = ("SYN", "ACK", "FIN", "RST", "PSH", "URG", "ECE", "CWR", "NS")


@dataclass
class _Side:
    flow: flow_pb2.FlowFilter = field(default_factory=flow_pb2.FlowFilter)
    extension: retina_pb2.FilterExtension = field(default_factory=retina_pb2.FilterExtension)
    # namespaces per end ("source"/"destination"), merged into that end's pod patterns at the end
    namespaces: dict[str, list[str]] = field(default_factory=lambda: {"source": [], "destination": []})

    def finished(self) -> flow_pb2.FlowFilter:
        """The filter with namespaces applied the way hubble observe does: a pod without a namespace
        is looked for in each given namespace (``ns/pod``); with no pod, the namespace alone (``ns/``)."""
        flt = flow_pb2.FlowFilter()
        flt.CopyFrom(self.flow)
        for end, namespaces in self.namespaces.items():
            if not namespaces:
                continue
            pods = getattr(flt, f"{end}_pod")
            merged = [p if "/" in p else f"{ns}/{p}" for p in pods for ns in namespaces] or [
                f"{ns}/" for ns in namespaces
            ]
            del pods[:]
            pods.extend(dict.fromkeys(merged))
        return flt


@dataclass
class FilterTracker:
    """One list of filters (the whitelist, or the blacklist for ``--not``) being built."""

    left: _Side = field(default_factory=_Side)
    right: _Side = field(default_factory=_Side)
    either: bool = False
    used: bool = False

    def add(self, flag: str, value: str) -> None:
        self.used = True
        kind, target = FILTER_FLAGS[flag]
        sides = (self.left, self.right)
        if kind == "either":
            self.either = True
            for side, end in ((self.left, "source"), (self.right, "destination")):
                if target == "namespace":
                    side.namespaces[end].append(value)
                else:
                    getattr(side.flow, f"{end}_{target}").append(value)
            return
        for side in sides:
            _apply(side, target, value)

    def filters(self) -> tuple[list[flow_pb2.FlowFilter], list[retina_pb2.FilterExtension]]:
        if not self.used:
            return [], []
        chosen = [self.left, self.right] if self.either else [self.left]
        return [s.finished() for s in chosen], [s.extension for s in chosen]


def _apply(side: _Side, target: str, value: str) -> None:
    flt, ext = side.flow, side.extension
    if target.endswith("_namespace"):
        side.namespaces[target.removesuffix("_namespace")].append(value)
    elif target.startswith(("source_", "destination_")):  # pod, ip, port
        getattr(flt, target).append(value)
    elif target == "protocol":
        flt.protocol.append(value.lower())
    elif target == "verdict":
        flt.verdict.append(flow_pb2.Verdict.Value(value.upper()))
    elif target == "traffic_direction":
        flt.traffic_direction.append(flow_pb2.TrafficDirection.Value(value.upper()))
    elif target == "tcp_flags":
        flags = [f.strip().upper() for f in value.split(",") if f.strip()]
        flt.tcp_flags.append(flow_pb2.TCPFlags(**{f: True for f in flags}))
    elif target == "drop_reason":
        ext.drop_reason.append(value.upper())
    elif target == "drop_reason_desc":
        flt.drop_reason_desc.append(flow_pb2.DropReason.Value(value.upper()))
    elif target == "type":
        ext.event.append(value.lower())
    elif target == "dns_query":
        flt.dns_query.append(value)
    elif target == "node_name":
        flt.node_name.append(value)
    else:  # pragma: no cover - FILTER_FLAGS and this function are kept together
        raise AssertionError(target)


# flag -> (kind, target): kind "either" fills source in the left filter and destination in the right one
FILTER_FLAGS: dict[str, tuple[str, str]] = {
    "--pod": ("either", "pod"),
    "--namespace": ("either", "namespace"),
    "--ip": ("either", "ip"),
    "--port": ("either", "port"),
    "--from-pod": ("one", "source_pod"),
    "--to-pod": ("one", "destination_pod"),
    "--from-namespace": ("one", "source_namespace"),
    "--to-namespace": ("one", "destination_namespace"),
    "--from-ip": ("one", "source_ip"),
    "--to-ip": ("one", "destination_ip"),
    "--from-port": ("one", "source_port"),
    "--to-port": ("one", "destination_port"),
    "--protocol": ("one", "protocol"),
    "--verdict": ("one", "verdict"),
    "--drop-reason": ("one", "drop_reason"),
    "--drop-reason-desc": ("one", "drop_reason_desc"),
    "--tcp-flags": ("one", "tcp_flags"),
    "--traffic-direction": ("one", "traffic_direction"),
    "--type": ("one", "type"),
    "--dns-query": ("one", "dns_query"),
    "--node-name": ("one", "node_name"),
}

_HELP = {
    "--pod": "flows from or to this pod ([namespace/]name prefix)",
    "--namespace": "flows from or to pods in this namespace",
    "--ip": "flows from or to this address or CIDR",
    "--port": "flows from or to this port (or range a-b)",
    "--from-pod": "source pod ([namespace/]name prefix)",
    "--to-pod": "destination pod ([namespace/]name prefix)",
    "--from-namespace": "source namespace",
    "--to-namespace": "destination namespace",
    "--from-ip": "source address or CIDR",
    "--to-ip": "destination address or CIDR",
    "--from-port": "source port (or range a-b)",
    "--to-port": "destination port (or range a-b)",
    "--protocol": "tcp, udp, icmp, icmpv4, icmpv6, sctp or dns",
    "--verdict": "FORWARDED or DROPPED",
    "--drop-reason": "the kernel's drop reason (e.g. NETFILTER_DROP, NO_SOCKET)",
    "--drop-reason-desc": "Hubble's drop code (e.g. POLICY_DENIED for a netfilter rule drop)",
    "--tcp-flags": "TCP flags that were all seen, comma-separated (e.g. SYN or SYN,ACK)",
    "--traffic-direction": "ingress or egress",
    "--type": f"kind of record: {', '.join(TYPES)}",
    "--dns-query": "DNS query name pattern (regular expression)",
    "--node-name": "node name pattern (glob)",
}

_CHOICES = {
    "--verdict": ("FORWARDED", "DROPPED", "forwarded", "dropped"),
    "--traffic-direction": ("ingress", "egress", "INGRESS", "EGRESS"),
    "--type": TYPES,
    "--drop-reason-desc": tuple(flow_pb2.DropReason.keys()),
}


class _FilterAction(argparse.Action):
    """Records each filter flag in order; a preceding ``--not`` sends it to the blacklist."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        flag = self.option_strings[0]
        negate = bool(getattr(namespace, "_negate_next", False))
        namespace._negate_next = False
        if flag == "--tcp-flags":
            bad = [f for f in str(values).upper().split(",") if f.strip() and f.strip() not in TCP_FLAGS]
            if bad:
                parser.error(f"--tcp-flags: unknown flag(s) {', '.join(bad)}; valid: {', '.join(TCP_FLAGS)}")
        entries = list(getattr(namespace, "filter_flags", None) or [])
        entries.append((negate, flag, str(values)))
        namespace.filter_flags = entries


class _NotAction(argparse.Action):
    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        namespace._negate_next = True


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (like hubble observe; repeat a flag to allow several values)")
    group.add_argument("--not", nargs=0, action=_NotAction, help="negate the next filter flag (blacklist it)")
    for flag in FILTER_FLAGS:
        group.add_argument(flag, action=_FilterAction, metavar="VALUE", help=_HELP[flag], choices=_CHOICES.get(flag))
    parser.set_defaults(filter_flags=[], _negate_next=False)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> int:
    """``--since``/``--until``: a duration ago (``30s``, ``5m``, ``1h``) or an RFC 3339 time; unix ns."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return int((now - float(match.group(1)) * _UNIT[match.group(2)]) * 1e9)
    try:
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is neither a duration (30s, 5m, 1h) nor an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1e9)


def build_request(
    filter_flags: Sequence[tuple[bool, str, str]],
    *,
    last: int | None = None,
    first: int | None = None,
    follow: bool = False,
    since: str | None = None,
    until: str | None = None,
) -> observer_pb2.GetFlowsRequest:
    white, black = FilterTracker(), FilterTracker()
    for negate, flag, value in filter_flags:
        (black if negate else white).add(flag, value)
    whitelist, white_ext = white.filters()
    blacklist, black_ext = black.filters()
    request = observer_pb2.GetFlowsRequest(whitelist=whitelist, blacklist=blacklist, follow=follow)
    if first:
        request.number, request.first = first, True
    elif last:
        request.number = last
    elif not follow and since is None and until is None:
        request.number = 20  # hubble observe's default
    if since is not None:
        request.since.CopyFrom(timestamp(parse_time(since)))
    if until is not None:
        request.until.CopyFrom(timestamp(parse_time(until)))
    # Always sent: it also asks the server for each flow's FlowMetadata (packets, bytes, drop reason).
    extension = any_pb2.Any()
    extension.Pack(retina_pb2.GetFlowsExtension(whitelist=white_ext, blacklist=black_ext))
    request.extensions.CopyFrom(extension)
    return request
