"""What to emit: Retina's MetricsConfiguration semantics, resolved into a plan the aggregator runs.

A ``MetricsConfiguration`` (or this processor's ``metrics:`` list, which mirrors it) names metrics the
way Retina does (``forward_count``, ``drop_bytes``, ``tcp_flag_gauges``, ``tcp_retransmission_count``,
``dns_request_count``, ...) and Retina matches them by substring; we do the same and also accept the
exported names (``adv_forward_count``, ``networkobservability_adv_forward_count``). Each resolved metric
gets its Prometheus label names in Retina's order: base labels, then source context labels, then
destination context labels (remote context) or the single pod context (local context), then
``is_reply`` when asked for (forward metrics only, as in Retina).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "ANNOTATION_DEFAULT_CONTEXT",
    "ANNOTATION_DEFAULT_METRICS",
    "AdvMetric",
    "ContextOptions",
    "MetricPlan",
    "Plan",
    "SpecError",
    "build_plan",
    "parse_duration",
    "resolve_metric_name",
]

PREFIX = "networkobservability_"


class SpecError(ValueError):
    """A metric name, context label or TTL that cannot be used."""


class AdvMetric(enum.Enum):
    """Advanced metrics this processor writes: value is the exported name (without the prefix)."""

    FORWARD_COUNT = "adv_forward_count"
    FORWARD_BYTES = "adv_forward_bytes"
    DROP_COUNT = "adv_drop_count"
    DROP_BYTES = "adv_drop_bytes"
    TCPFLAGS = "adv_tcpflags_count"
    TCPRETRANS = "adv_tcpretrans_count"
    DNS_REQUEST = "adv_dns_request_count"
    DNS_RESPONSE = "adv_dns_response_count"
    DNS_LATENCY = "adv_dns_latency_ms"  # beyond Retina: histogram of query -> response latency
    FLOWS_TO_WORLD = "adv_flows_to_world_count"  # Hubble's flows-to-world: non-reply flows leaving the cluster
    ZONE_BYTES = "adv_zone_bytes"  # beyond Retina: bytes between availability zones

    @property
    def full_name(self) -> str:
        return PREFIX + self.value


BASE_LABELS: dict[AdvMetric, tuple[str, ...]] = {
    AdvMetric.FORWARD_COUNT: ("direction",),
    AdvMetric.FORWARD_BYTES: ("direction",),
    AdvMetric.DROP_COUNT: ("reason", "direction"),
    AdvMetric.DROP_BYTES: ("reason", "direction"),
    AdvMetric.TCPFLAGS: ("flag",),
    AdvMetric.TCPRETRANS: ("direction",),
    AdvMetric.DNS_REQUEST: ("query_type", "query"),
    AdvMetric.DNS_RESPONSE: ("return_code", "query_type", "query", "response", "num_response"),
    AdvMetric.DNS_LATENCY: ("return_code", "query_type"),
    AdvMetric.FLOWS_TO_WORLD: ("protocol", "verdict"),
    AdvMetric.ZONE_BYTES: ("source_zone", "destination_zone"),
}

DESCRIPTIONS: dict[AdvMetric, str] = {
    AdvMetric.FORWARD_COUNT: "Total number of forwarded packets",
    AdvMetric.FORWARD_BYTES: "Total number of forwarded bytes",
    AdvMetric.DROP_COUNT: "Total number of dropped packets",
    AdvMetric.DROP_BYTES: "Total number of dropped bytes",
    AdvMetric.TCPFLAGS: "Total number of packets by TCP flag",
    AdvMetric.TCPRETRANS: "Total number of TCP retransmitted packets",
    AdvMetric.DNS_REQUEST: "Total number of DNS query packets",
    AdvMetric.DNS_RESPONSE: "Total number of DNS response packets",
    AdvMetric.DNS_LATENCY: "DNS query to response latency in milliseconds (retina-otel, beyond Retina)",
    AdvMetric.FLOWS_TO_WORLD: "Packets of non-reply flows to addresses outside the cluster and its named networks "
    "(Hubble's flows-to-world)",
    AdvMetric.ZONE_BYTES: "Forwarded bytes by source and destination availability zone (retina-otel, beyond Retina)",
}

# Retina's names (pkg/utils metric names) as written in MetricsConfiguration contextOptions.
RETINA_NAMES: dict[AdvMetric, str] = {
    AdvMetric.FORWARD_COUNT: "forward_count",
    AdvMetric.FORWARD_BYTES: "forward_bytes",
    AdvMetric.DROP_COUNT: "drop_count",
    AdvMetric.DROP_BYTES: "drop_bytes",
    AdvMetric.TCPFLAGS: "tcp_flag_gauges",
    AdvMetric.TCPRETRANS: "tcp_retransmission_count",
    AdvMetric.DNS_REQUEST: "dns_request_count",
    AdvMetric.DNS_RESPONSE: "dns_response_count",
    AdvMetric.DNS_LATENCY: "dns_latency_ms",
    AdvMetric.FLOWS_TO_WORLD: "flows_to_world",
    AdvMetric.ZONE_BYTES: "zone_bytes",
}

# Retina's annotation defaults (pkg/module/metrics DefaultMetrics / DefaultCtxOptions): every advanced
# metric, with ip, namespace, podname and workload as source and destination context.
ANNOTATION_DEFAULT_METRICS: tuple[str, ...] = (
    "forward_count",
    "forward_bytes",
    "drop_count",
    "drop_bytes",
    "tcp_flag_gauges",
    "tcp_retransmission_count",
    "node_apiserver_latency",
    "node_apiserver_handshake_latency",
    "node_apiserver_no_response",
    "dns_request_count",
    "dns_response_count",
)
ANNOTATION_DEFAULT_CONTEXT: tuple[str, ...] = ("ip", "namespace", "podname", "workload")

# Metric names that belong to other components (apiserverlatency); accepted and skipped here.
FOREIGN_SUBSTRINGS = ("node_apiserver",)

CONTEXT_OPTIONS = ("ip", "namespace", "podname", "workload", "service", "port", "zone", "network")


def resolve_metric_name(name: str) -> AdvMetric | None:
    """Retina's substring matching; ``None`` for metrics another component owns (apiserver latency)."""
    text = name.strip().lower()
    text = text.removeprefix(PREFIX).removeprefix("adv_")
    if any(s in text for s in FOREIGN_SUBSTRINGS):
        return None
    if "world" in text:
        return AdvMetric.FLOWS_TO_WORLD
    if "zone" in text:
        return AdvMetric.ZONE_BYTES
    if "forward" in text:
        return AdvMetric.FORWARD_BYTES if "bytes" in text else AdvMetric.FORWARD_COUNT
    if "drop" in text:
        return AdvMetric.DROP_BYTES if "bytes" in text else AdvMetric.DROP_COUNT
    if "tcp" in text and "flag" in text:
        return AdvMetric.TCPFLAGS
    if "retrans" in text:
        return AdvMetric.TCPRETRANS
    if "dns" in text:
        if "latency" in text:
            return AdvMetric.DNS_LATENCY
        if "request" in text or "query" in text:
            return AdvMetric.DNS_REQUEST
        if "response" in text:
            return AdvMetric.DNS_RESPONSE
    raise SpecError(
        f"{name!r} is not an advanced metric; valid: {', '.join(RETINA_NAMES.values())} "
        f"(or the exported adv_* names)"
    )


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int | None) -> float | None:
    """A Go duration (``"5m"``, ``"1h30m"``, ``"90s"``) or seconds -> seconds; empty/0 -> ``None`` (no TTL)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if not text:
            return None
        if re.fullmatch(r"\d+(\.\d*)?", text):
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
            if pos != len(text) or pos == 0:
                raise SpecError(f"ttl {value!r} is not a duration like 30s, 5m or 1h30m")
    if seconds < 0:
        raise SpecError(f"ttl {value!r} cannot be negative")
    return seconds or None


@dataclass(frozen=True, slots=True)
class ContextOptions:
    """Which context labels one side contributes (Retina's ContextOptions), in Retina's label order."""

    ip: bool = False
    namespace: bool = False
    podname: bool = False
    workload: bool = False
    service: bool = False
    port: bool = False
    zone: bool = False
    network: bool = False  # the networks processor's network.name ("world" outside the cluster)

    @classmethod
    def parse(cls, options: Iterable[str] | None) -> ContextOptions:
        chosen: dict[str, bool] = {}
        for option in options or ():
            key = option.strip().lower()
            if key in ("workload_kind", "workload_name"):
                key = "workload"
            if key in CONTEXT_OPTIONS:
                chosen[key] = True
            # Retina ignores unknown options silently; so do we (they add no label).
        return cls(**chosen)

    @property
    def any(self) -> bool:
        return any(
            (self.ip, self.namespace, self.podname, self.workload, self.service, self.port, self.zone, self.network)
        )

    @property
    def entry_fields(self) -> tuple[str, ...]:
        """The label fields that come from the endpoint entry (everything except ip and port)."""
        return tuple(name for name in self.labels() if name not in ("ip", "port"))

    def labels(self, prefix: str = "") -> tuple[str, ...]:
        out: list[str] = []
        if self.ip:
            out.append("ip")
        if self.namespace:
            out.append("namespace")
        if self.podname:
            out.append("podname")
        if self.workload:
            out.extend(("workload_kind", "workload_name"))
        if self.service:
            out.append("service")
        if self.port:
            out.append("port")
        if self.zone:
            out.append("zone")
        if self.network:
            out.append("network")
        return tuple(prefix + name for name in out)


@dataclass(frozen=True, slots=True)
class MetricPlan:
    """One advanced metric as it will be written."""

    metric: AdvMetric
    remote: bool
    source: ContextOptions  # the pod context in local context
    destination: ContextOptions  # unused in local context
    is_reply: bool
    ttl_seconds: float | None
    max_series: int | None

    @property
    def name(self) -> str:
        return self.metric.full_name

    @property
    def label_names(self) -> tuple[str, ...]:
        names = list(BASE_LABELS[self.metric])
        if self.remote:
            names.extend(self.source.labels("source_"))
            names.extend(self.destination.labels("destination_"))
        else:
            names.extend(self.source.labels())
        if self.is_reply:
            names.append("is_reply")
        return tuple(names)


@dataclass(frozen=True)
class Plan:
    """Everything the aggregator needs for one configuration generation (immutable, swapped whole)."""

    metrics: Mapping[AdvMetric, MetricPlan] = field(default_factory=dict)
    include_namespaces: frozenset[str] | None = None
    exclude_namespaces: frozenset[str] = frozenset()
    source: str = "none"  # config | metricsconfiguration/<name> | annotations | none

    def namespace_allowed(self, namespace: str) -> bool:
        if self.include_namespaces is not None:
            return namespace in self.include_namespaces
        return namespace not in self.exclude_namespaces

    @property
    def filters_namespaces(self) -> bool:
        return self.include_namespaces is not None or bool(self.exclude_namespaces)


def _get(option: Mapping[str, Any], camel: str, snake: str) -> Any:
    return option.get(camel, option.get(snake))


def build_plan(
    context_options: Sequence[Mapping[str, Any]],
    *,
    remote: bool,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    max_series: int | None = None,
    default_ttl: float | None = None,
    source: str = "config",
) -> Plan:
    """Resolve ``contextOptions`` entries (camelCase as in the CRD, or snake_case) into a :class:`Plan`.

    Raises :class:`SpecError` on an unknown metric name or a bad TTL; later duplicates of the same
    metric replace earlier ones (Retina keys its registry by metric name the same way).
    """
    metrics: dict[AdvMetric, MetricPlan] = {}
    for option in context_options:
        name = str(_get(option, "metricName", "metric_name") or "")
        if not name:
            raise SpecError("contextOptions entry without metricName")
        metric = resolve_metric_name(name)
        if metric is None:
            continue
        ttl_raw = option.get("ttl")
        ttl = parse_duration(ttl_raw) if ttl_raw not in (None, "") else default_ttl
        additional = [str(a).strip().lower() for a in (_get(option, "additionalLabels", "additional_labels") or ())]
        per_metric_budget = _get(option, "maxSeries", "max_series")
        src_opts = ContextOptions.parse(_get(option, "sourceLabels", "source_labels"))
        dst_opts = ContextOptions.parse(_get(option, "destinationLabels", "destination_labels"))
        if metric is AdvMetric.ZONE_BYTES:  # its base labels are the zones; context only in remote context
            src_opts = replace(src_opts, zone=False) if remote else ContextOptions()
            dst_opts = replace(dst_opts, zone=False) if remote else ContextOptions()
        metrics[metric] = MetricPlan(
            metric=metric,
            remote=remote,
            source=src_opts,
            destination=dst_opts,
            is_reply="is_reply" in additional and metric in (AdvMetric.FORWARD_COUNT, AdvMetric.FORWARD_BYTES),
            ttl_seconds=ttl,
            max_series=int(per_metric_budget) if per_metric_budget else max_series,
        )
    return Plan(
        metrics=metrics,
        include_namespaces=frozenset(include) if include else None,
        exclude_namespaces=frozenset(exclude or ()),
        source=source,
    )


def annotation_plan(*, remote: bool, max_series: int | None, default_ttl: float | None) -> Plan:
    """Retina's ``enableAnnotations`` defaults: all advanced metrics, ip/namespace/podname/workload."""
    options = [
        {
            "metricName": name,
            "sourceLabels": list(ANNOTATION_DEFAULT_CONTEXT),
            "destinationLabels": list(ANNOTATION_DEFAULT_CONTEXT),
        }
        for name in ANNOTATION_DEFAULT_METRICS
    ]
    return build_plan(options, remote=remote, max_series=max_series, default_ttl=default_ttl, source="annotations")
