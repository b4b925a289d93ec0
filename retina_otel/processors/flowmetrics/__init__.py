"""``flowmetrics``: Retina's advanced (adv_*) pod-level metrics from enriched flow batches.

See ``docs/processors/flowmetrics.md`` for every metric, label and setting.
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.processors.flowmetrics.config import (
    ContextOptionConfig,
    FlowMetricsConfig,
    MetricsConfigurationSource,
    NamespacesConfig,
)
from retina_otel.processors.flowmetrics.processor import FlowMetricsProcessor
from retina_otel.processors.flowmetrics.spec import AdvMetric, Plan, build_plan

__all__ = [
    "FACTORY",
    "AdvMetric",
    "ContextOptionConfig",
    "FlowMetricsConfig",
    "FlowMetricsProcessor",
    "MetricsConfigurationSource",
    "NamespacesConfig",
    "Plan",
    "build_plan",
]


def _create(
    settings: CreateSettings, config: FlowMetricsConfig, next_consumer: FlowConsumer | None
) -> FlowMetricsProcessor:
    return FlowMetricsProcessor(settings, config, next_consumer)


FACTORY: Factory[FlowMetricsConfig] = Factory(
    type="flowmetrics",
    kind="processor",
    config_model=FlowMetricsConfig,
    create=_create,
    description="Retina's adv_* pod-level metrics (forward, drop, tcpflags, tcpretrans, dns) from flows",
)
