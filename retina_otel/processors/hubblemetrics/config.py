"""Settings of the ``hubblemetrics`` processor."""

from __future__ import annotations

from pydantic import Field, field_validator

from retina_otel.component import ComponentConfig
from retina_otel.endpoints import OptionalEndpoint
from retina_otel.processors.hubblemetrics.spec import SpecError, parse_metric

__all__ = ["DEFAULT_METRICS", "HubbleMetricsConfig"]

DEFAULT_METRICS = (
    "flow:sourceEgressContext=pod;destinationIngressContext=pod",
    "tcp:sourceEgressContext=pod;destinationIngressContext=pod",
    "dns:query;sourceEgressContext=pod;destinationIngressContext=pod",
    "drop:sourceEgressContext=pod;destinationIngressContext=pod",
)
"""Retina's chart default (``hubble.metrics.enabled`` in its Hubble-mode values)."""


class HubbleMetricsConfig(ComponentConfig):
    endpoint: OptionalEndpoint = Field(
        "0.0.0.0:9965", description="host:port of this family's own /metrics (Hubble's port 9965); empty: not served"
    )
    metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="Hubble metrics in Hubble's syntax, `<handler>[:<option>[=<value>];...]`: handlers flow, tcp, "
        "drop, dns, icmp, port-distribution; options sourceContext, destinationContext (and their Egress/Ingress "
        "variants), labelsContext, and dns's query and ignoreAAAA. Default: Retina's chart default",
    )
    cluster_label: str = Field(
        "cluster",
        pattern=r"^([a-zA-Z_][a-zA-Z0-9_]*)?$",
        description="label carrying `service.cluster_name` on every series when it is set; empty: none",
    )
    series_ttl_seconds: float = Field(
        0.0, ge=0, description="remove a series not updated for this long; 0: keep (Hubble keeps them)"
    )
    max_series_per_metric: int | None = Field(
        100_000, ge=1, description="series budget per metric; further label sets fold into one overflow series"
    )

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for i, text in enumerate(value):
            try:
                spec = parse_metric(text)
            except SpecError as exc:
                raise ValueError(f"metrics[{i}] {text!r}: {exc}") from None
            if spec.handler in seen:
                raise ValueError(f"metrics[{i}] {text!r}: {spec.handler} is enabled twice (Hubble allows it once)")
            seen.add(spec.handler)
        return value
