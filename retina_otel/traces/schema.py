"""What a span says: name, attributes, events, status text and the observing endpoint's resource.

Attribute names are the flow records' (:mod:`retina_otel.flowschema`: ``source.*`` is the connection's
initiator, ``destination.*`` its responder, both ends' Kubernetes metadata), minus what the span itself
carries (times), plus ``retina.span.*``. The resource is the endpoint the span was observed at (the
initiator for a CLIENT span, the responder for a SERVER span): its ``k8s.*`` metadata and a
``service.name`` (workload, else pod, else Service, else the address), so Tempo groups spans by the
pod's workload and its service graph pairs CLIENT and SERVER spans.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from retina_otel.flows import STRINGS, TcpFlag
from retina_otel.flowschema import rows_as_attributes
from retina_otel.traces.spans import CloseReason, EventKind, SpanBatch, SpanKind, StatusCode

__all__ = ["SpanView", "one_line", "span_views"]

_DROPPED_FROM_FLOW = (
    "event.name",
    "retina.flow.is_reply",
    "retina.flow.start_time_unix_nano",
    "retina.flow.end_time_unix_nano",
)
_RESOURCE_KEYS = (
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.node.name",
    "k8s.workload.kind",
    "k8s.workload.name",
    "k8s.service.name",
    "cloud.availability_zone",
)
_CLOSE = {r.value: r.name.lower() for r in CloseReason}
_FLAGS = [f.name for f in TcpFlag]


@dataclass(frozen=True, slots=True)
class SpanEventView:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanView:
    """One span as text and numbers, ready for an exporter (OTLP or debug)."""

    name: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes  # all zero: root
    kind: SpanKind
    status: StatusCode
    status_message: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, str]
    events: list[SpanEventView]
    dropped_events: int


def _side_name(attrs: Mapping[str, Any], prefix: str) -> str:
    for key in ("k8s.service.name", "k8s.pod.name", "k8s.node.name"):
        value = attrs.get(f"{prefix}.{key}")
        if value:
            return str(value)
    return str(attrs.get(f"{prefix}.address", "?"))


def _name(attrs: Mapping[str, Any], dns_query: str | None) -> str:
    if dns_query is not None:
        return dns_query or "dns"
    transport = attrs.get("network.transport", "ip")
    src = str(attrs.get("source.address"))
    if "source.port" in attrs:
        destination = f"{_side_name(attrs, 'destination')}:{attrs['destination.port']}"
        return f"{transport} {src}:{attrs['source.port']} -> {destination}"
    return f"{transport} {src} -> {_side_name(attrs, 'destination')}"


def _resource(attrs: Mapping[str, Any], prefix: str) -> dict[str, str]:
    out = {key: str(attrs[f"{prefix}.{key}"]) for key in _RESOURCE_KEYS if attrs.get(f"{prefix}.{key}")}
    out["service.name"] = (
        out.get("k8s.workload.name")
        or out.get("k8s.pod.name")
        or out.get("k8s.service.name")
        or str(attrs.get(f"{prefix}.address"))
    )
    return out


def _event(e: Any) -> SpanEventView:
    kind = int(e["kind"])
    time_ns = int(e["time_ns"])
    if kind == EventKind.DROP:
        return SpanEventView(
            "retina.drop",
            time_ns,
            {"retina.drop.reason": STRINGS.name(int(e["reason"])), "retina.drop.packets": int(e["packets"])},
        )
    if kind == EventKind.RETRANSMIT:
        return SpanEventView("retina.tcp.retransmit", time_ns, {"retina.tcp.retransmits": int(e["packets"])})
    flags = int(e["tcp_flags"])
    attributes: dict[str, Any] = {
        "retina.flow.is_reply": bool(e["is_reply"]),
        "retina.flow.packets": int(e["packets"]),
        "retina.flow.bytes": int(e["bytes"]),
    }
    if flags:
        attributes["retina.tcp.flags"] = ",".join(name for i, name in enumerate(_FLAGS) if flags >> i & 1)
    return SpanEventView("retina.flow.report", time_ns, attributes)


def _status_message(status: int, close: int, drops: int, attrs: Mapping[str, Any]) -> str:
    if status != StatusCode.ERROR:
        return ""
    parts = []
    if close == CloseReason.REFUSED:
        parts.append("connection refused")
    elif close == CloseReason.RST:
        parts.append("connection reset")
    elif close == CloseReason.DNS:
        parts.append(f"DNS response code {attrs.get('dns.response_code_name') or attrs.get('dns.response_code')}")
    if drops:
        noun = "packet" if drops == 1 else "packets"
        parts.append(f"{drops} {noun} dropped ({attrs.get('retina.drop.reason', 'unknown reason')})")
    return "; ".join(parts)


def span_views(batch: SpanBatch) -> Iterator[SpanView]:
    """Each span of ``batch`` with its name, attributes, resource and events (one Python object per span:
    for exporters only)."""
    records = batch.records
    for i, attrs in enumerate(rows_as_attributes(batch.flows())):
        r = records[i]
        for key in _DROPPED_FROM_FLOW:
            attrs.pop(key, None)
        close = int(r["close_reason"])
        drops = int(r["drops"])
        attrs["retina.span.close_reason"] = _CLOSE.get(close, "unknown")
        if drops:
            attrs["retina.drop.count"] = drops
        kind = SpanKind(int(r["kind"]))
        entry = batch.dns[i] if batch.dns is not None else None
        query = None if close != CloseReason.DNS else str((entry or {}).get("query") or "")
        status = int(r["status"])
        yield SpanView(
            name=_name(attrs, query),
            trace_id=r["trace_id"].tobytes(),
            span_id=r["span_id"].tobytes(),
            parent_span_id=r["parent_span_id"].tobytes(),
            kind=kind,
            status=StatusCode(status),
            status_message=_status_message(status, close, drops, attrs),
            start_ns=int(r["flow"]["time_start_ns"]),
            end_ns=int(r["flow"]["time_end_ns"]),
            attributes=attrs,
            resource=_resource(attrs, "destination" if kind == SpanKind.SERVER else "source"),
            events=[_event(e) for e in batch.span_events(i)],
            dropped_events=int(r["dropped_events"]),
        )


def one_line(view: SpanView) -> str:
    """A span as one human-readable line (the debug exporter)."""
    parent = view.parent_span_id.hex() if any(view.parent_span_id) else "-"
    status = view.status.name + (f" {view.status_message}" if view.status_message else "")
    events = f" events={len(view.events)}" + (f"+{view.dropped_events}" if view.dropped_events else "")
    return (
        f"span {view.kind.name} {view.name} trace={view.trace_id.hex()} span={view.span_id.hex()} "
        f"parent={parent} {(view.end_ns - view.start_ns) / 1e6:.3f}ms {status}{events}"
    )
