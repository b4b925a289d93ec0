"""``hubblemetrics``: Hubble's metrics (hubble_flows_processed_total, hubble_tcp_flags_total, hubble_drop_total,
hubble_dns_*, hubble_icmp_total, hubble_port_distribution_total) from the agent's flows, on Hubble's port 9965,
with Hubble's context options. See ``docs/processors/hubblemetrics.md``.
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.processors.hubblemetrics.config import DEFAULT_METRICS, HubbleMetricsConfig
from retina_otel.processors.hubblemetrics.processor import HubbleMetricsProcessor
from retina_otel.processors.hubblemetrics.spec import MetricSpec, SpecError, parse_metric

__all__ = [
    "CONNECTOR_FACTORY",
    "DEFAULT_METRICS",
    "FACTORY",
    "HubbleMetricsConfig",
    "HubbleMetricsProcessor",
    "MetricSpec",
    "SpecError",
    "parse_metric",
]


def _create(
    settings: CreateSettings, config: HubbleMetricsConfig, next_consumer: FlowConsumer | None
) -> HubbleMetricsProcessor:
    return HubbleMetricsProcessor(settings, config, next_consumer)


def _create_connector(
    settings: CreateSettings, config: HubbleMetricsConfig, next_consumer: FlowConsumer | None
) -> HubbleMetricsProcessor:
    return HubbleMetricsProcessor(settings, config, None, connector=True)


FACTORY: Factory[HubbleMetricsConfig] = Factory(
    type="hubblemetrics",
    kind="processor",
    config_model=HubbleMetricsConfig,
    create=_create,
    description="Hubble's metrics (hubble_*) from flows, with Hubble's context options, on their own endpoint (:9965)",
    mutates_data=False,
)

CONNECTOR_FACTORY: Factory[HubbleMetricsConfig] = Factory(
    type="hubblemetrics",
    kind="connector",
    config_model=HubbleMetricsConfig,
    create=_create_connector,
    description="Hubble's metrics (hubble_*) from the flow records of logs pipelines into metrics pipelines "
    "(`endpoint` unused: a prometheus exporter of the metrics pipeline serves them)",
    connects=(("logs", "metrics"),),
)
