"""Configuration of the ``flowmetrics`` processor (frozen, unknown keys rejected)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ConfigDict, Field, field_validator, model_validator

from retina_otel.component import ComponentConfig
from retina_otel.processors.flowmetrics.spec import SpecError, parse_duration, resolve_metric_name

__all__ = [
    "DEFAULT_DNS_LATENCY_BUCKETS_MS",
    "ContextOptionConfig",
    "FlowMetricsConfig",
    "MetricsConfigurationSource",
    "NamespacesConfig",
]

DEFAULT_DNS_LATENCY_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)


def _spec_checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """A field validator running ``check`` on the value, its :class:`SpecError` as pydantic's ValueError."""

    def validate(value: str) -> str:
        try:
            check(value)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return value

    return validate


class _Strict(ComponentConfig):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, populate_by_name=True)


class ContextOptionConfig(_Strict):
    """One entry of ``metrics:``, mirroring a MetricsConfiguration ``spec.contextOptions[]`` item."""

    metric_name: str = Field(
        alias="metricName",
        description="Retina metric name (forward_count, forward_bytes, drop_count, drop_bytes, tcp_flag_gauges, "
        "tcp_retransmission_count, dns_request_count, dns_response_count, flows_to_world) or the exported adv_* "
        "name; dns_latency_ms adds the DNS latency histogram and zone_bytes the bytes between zones (beyond Retina)",
    )
    source_labels: list[str] = Field(
        default_factory=list,
        alias="sourceLabels",
        description="context labels of the source side (ip, namespace, podname, workload, service, port, zone, "
        "network); in local context the labels of the local pod; default none",
    )
    destination_labels: list[str] = Field(
        default_factory=list,
        alias="destinationLabels",
        description="context labels of the destination side (remote context only); default none",
    )
    additional_labels: list[str] = Field(
        default_factory=list,
        alias="additionalLabels",
        description="extra labels; 'is_reply' on forward metrics; default none",
    )
    ttl: str = Field(
        "",
        description="Go duration (30s, 5m, 1h30m): series not updated within it are removed; default '' = "
        "max(default_ttl) / never",
    )
    max_series: int | None = Field(
        None,
        alias="maxSeries",
        gt=0,
        description="series budget of this metric (overrides max_series_per_metric); default None",
    )

    _known_metric = field_validator("metric_name")(_spec_checked(resolve_metric_name))
    _valid_ttl = field_validator("ttl")(_spec_checked(parse_duration))


class NamespacesConfig(_Strict):
    """Namespace include or exclude list (exactly one may be set, as in the CRD)."""

    include: list[str] | None = Field(None, description="only these namespaces get pod-level metrics")
    exclude: list[str] | None = Field(None, description="these namespaces get no pod-level metrics")

    @model_validator(mode="after")
    def _one_of(self) -> NamespacesConfig:
        if self.include is not None and self.exclude is not None:
            raise ValueError("set namespaces.include or namespaces.exclude, not both")
        return self


class MetricsConfigurationSource(_Strict):
    """Where the MetricsConfiguration custom resources are watched (retina.sh/v1alpha1, cluster scoped)."""

    enabled: bool = Field(False, description="watch MetricsConfiguration objects; default false (standalone)")
    api_url: str = Field("", description="Kubernetes API URL (e.g. http://127.0.0.1:8001); default: kubeconfig "
                         "or in-cluster")
    kubeconfig: str = Field("", description="path of a kubeconfig file; default: in-cluster service account")
    context: str = Field("", description="kubeconfig context; default: the current one")
    relist_seconds: float = Field(300.0, gt=0, description="seconds between full re-lists; default 300")
    watch_timeout_seconds: float = Field(
        60.0, gt=0, description="read timeout of one watch request before it is re-opened, seconds; default 60"
    )


class FlowMetricsConfig(ComponentConfig):
    """Settings of the ``flowmetrics`` processor."""

    pod_level: bool = Field(True, description="write the adv_* pod-level metrics (Retina enablePodLevel); "
                            "default true")
    remote_context: bool = Field(
        False,
        description="remote context: one series per source/destination pair with source_/destination_ labels; "
        "default false = local context (each local pod's egress and ingress)",
    )
    enable_annotations: bool = Field(
        False,
        description="Retina enableAnnotations: use Retina's annotation defaults (all adv metrics, "
        "ip/namespace/podname/workload) and ignore MetricsConfiguration; default false",
    )
    metrics: list[ContextOptionConfig] = Field(
        default_factory=list,
        description="standalone metric selection mirroring MetricsConfiguration spec.contextOptions; used when no "
        "Accepted MetricsConfiguration applies; default none",
    )
    namespaces: NamespacesConfig = Field(
        default_factory=NamespacesConfig, description="standalone namespace include/exclude; default all"
    )
    metrics_configuration: MetricsConfigurationSource = Field(
        default_factory=MetricsConfigurationSource, description="MetricsConfiguration watch settings"
    )
    max_series_per_metric: int | None = Field(
        50_000,
        gt=0,
        description="series budget per adv metric; new label sets past it fold into one overflow series "
        "(counted in controlplane_networkobservability_overflow_series_counter); default 50000, null = unbounded",
    )
    default_ttl: str = Field(
        "",
        description="TTL (Go duration) for metrics whose contextOption has none; default '' = never expire",
    )
    pod_forget_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="seconds between forget_pods() and the removal of the pods' series (0 = at once; use when "
        "the caller has no grace period of its own); default 0",
    )
    node_metrics: bool = Field(
        False,
        description="also derive the basic node-level forward_*/drop_*/dns_* counters from flows; only for "
        "pipelines without the packetforward/dropreason/dns receivers, which write them; default false",
    )
    dns_latency_buckets_ms: list[float] = Field(
        default_factory=lambda: list(DEFAULT_DNS_LATENCY_BUCKETS_MS),
        min_length=1,
        description="bucket bounds (ms) of networkobservability_adv_dns_latency_ms; default 0.5 ... 5000",
    )

    _valid_ttl = field_validator("default_ttl")(_spec_checked(parse_duration))

    @field_validator("dns_latency_buckets_ms")
    @classmethod
    def _sorted(cls, value: list[float]) -> list[float]:
        if any(b >= a for a, b in zip(value[1:], value, strict=False)):
            raise ValueError("bucket bounds must be strictly increasing")
        return value
