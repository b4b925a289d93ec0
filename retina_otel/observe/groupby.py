"""``--group-by FIELD[,FIELD]``: packets, bytes and flow records per group, as a table (refreshed every
second while following). Packets and bytes are the record's own counts (FlowMetadata), so the totals
over all groups equal the totals of the same records exported anywhere else."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from retina_otel.hubble import flow_pb2, observer_pb2
from retina_otel.observe.output import format_table, metadata

__all__ = ["FIELDS", "GroupBy"]


def _l4(flow: flow_pb2.Flow) -> str:
    if flow.l7.HasField("dns"):
        return "dns"
    return (flow.l4.WhichOneof("protocol") or "").lower()


def _port(side: str) -> Callable[[flow_pb2.Flow], str]:
    def get(flow: flow_pb2.Flow) -> str:
        kind = flow.l4.WhichOneof("protocol")
        if kind in ("TCP", "UDP", "SCTP"):
            return str(getattr(getattr(flow.l4, kind), f"{side}_port"))
        return ""

    return get


def _workload(side: str) -> Callable[[flow_pb2.Flow], str]:
    def get(flow: flow_pb2.Flow) -> str:
        workloads = getattr(flow, side).workloads
        return f"{workloads[0].kind}/{workloads[0].name}" if workloads else ""

    return get


FIELDS: dict[str, Callable[[flow_pb2.Flow], str]] = {
    "source_namespace": lambda f: f.source.namespace,
    "source_pod": lambda f: f"{f.source.namespace}/{f.source.pod_name}" if f.source.pod_name else "",
    "source_workload": _workload("source"),
    "source_ip": lambda f: f.IP.source,
    "source_port": _port("source"),
    "destination_namespace": lambda f: f.destination.namespace,
    "destination_pod": lambda f: (
        f"{f.destination.namespace}/{f.destination.pod_name}" if f.destination.pod_name else ""
    ),
    "destination_workload": _workload("destination"),
    "destination_ip": lambda f: f.IP.destination,
    "destination_port": _port("destination"),
    "protocol": _l4,
    "verdict": lambda f: flow_pb2.Verdict.Name(f.verdict),
    "drop_reason": lambda f: metadata(f).drop_reason,
    "traffic_direction": lambda f: flow_pb2.TrafficDirection.Name(f.traffic_direction),
    "type": lambda f: metadata(f).event,
    "node": lambda f: f.node_name,
    "dns_query": lambda f: f.l7.dns.query if f.l7.HasField("dns") else "",
}


def parse_fields(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIELDS]
    if not names or unknown:
        raise ValueError(
            f"--group-by: unknown field(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(FIELDS)}"
        )
    return names


class GroupBy:
    def __init__(self, fields: list[str], out: TextIO, err: TextIO, follow: bool, interval: float = 1.0) -> None:
        self.fields = fields
        self.out = out
        self.err = err
        self.follow = follow
        self.interval = interval
        self.groups: dict[tuple[str, ...], list[int]] = {}
        self.lost = 0
        self._last_print = time.monotonic()

    def __call__(self, response: observer_pb2.GetFlowsResponse) -> None:
        kind = response.WhichOneof("response_types")
        if kind == "lost_events":
            self.lost += int(response.lost_events.num_events_lost)
        elif kind == "flow":
            flow = response.flow
            key = tuple(FIELDS[name](flow) for name in self.fields)
            meta = metadata(flow)
            totals = self.groups.setdefault(key, [0, 0, 0])
            totals[0] += int(meta.packets)
            totals[1] += int(meta.bytes)
            totals[2] += 1
        if self.follow and time.monotonic() - self._last_print >= self.interval:
            self.render()

    def tick(self) -> None:
        """Called about every second while following, also when no flow arrives."""
        if self.follow and time.monotonic() - self._last_print >= self.interval:
            self.render()

    def render(self) -> None:
        self._last_print = time.monotonic()
        header = (*(f.upper() for f in self.fields), "PACKETS", "BYTES", "FLOWS")
        ordered = sorted(self.groups.items(), key=lambda kv: (-kv[1][0], -kv[1][2], kv[0]))
        rows = [(*(v or "-" for v in key), *(str(n) for n in totals)) for key, totals in ordered]
        text = format_table(rows, header)
        if self.follow and self.out.isatty():
            text = "\x1b[H\x1b[2J" + text
        print(text, file=self.out, flush=True)
        if self.lost:
            print(f"EVENTS LOST: {self.lost}", file=self.err, flush=True)
        if self.follow and not self.out.isatty():
            print(file=self.out, flush=True)

    def finish(self) -> None:
        self.render()
