"""``flowmetrics``: Retina's advanced (adv_*) pod-level metrics from enriched flow batches.

A connector (``connectors: {flowmetrics: ...}``, the exporter of a logs pipeline and a receiver of the
metrics pipelines whose exporters publish its metrics) or, for compatibility, a processor in a logs
pipeline (its metrics then go to every metrics exporter). See ``docs/processors/flowmetrics.md``.
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.flows import FLOW_DTYPE
from retina_otel.processors.flowmetrics.config import (
    ContextOptionConfig,
    FlowMetricsConfig,
    MetricsConfigurationSource,
    NamespacesConfig,
)
from retina_otel.processors.flowmetrics.processor import FlowMetricsProcessor
from retina_otel.processors.flowmetrics.spec import AdvMetric, Plan, build_plan

__all__ = [
    "CONNECTOR_FACTORY",
    "FACTORY",
    "READS",
    "AdvMetric",
    "ContextOptionConfig",
    "FlowMetricsConfig",
    "FlowMetricsProcessor",
    "MetricsConfigurationSource",
    "NamespacesConfig",
    "Plan",
    "build_plan",
]


READS = frozenset(name for name in FLOW_DTYPE.names or () if name not in ("srtt_us", "handshake_us"))
"""The flow-record fields flowmetrics reads (any metric, any config): every field but the RTT columns
(tests/test_flowmetrics_reads.py records what it touches and keeps this honest)."""


def _reads(_config: FlowMetricsConfig) -> frozenset[str]:
    return READS


def _create(
    settings: CreateSettings, config: FlowMetricsConfig, next_consumer: FlowConsumer | None
) -> FlowMetricsProcessor:
    return FlowMetricsProcessor(settings, config, next_consumer)


FACTORY: Factory[FlowMetricsConfig] = Factory(
    type="flowmetrics",
    kind="processor",
    config_model=FlowMetricsConfig,
    create=_create,
    description="Retina's adv_* pod-level metrics (forward, drop, tcpflags, tcpretrans, dns) from flows "
    "(the processor form; prefer the connector)",
    mutates_data=False,
    reads=_reads,
    sums_flows=True,
)

CONNECTOR_FACTORY: Factory[FlowMetricsConfig] = Factory(
    type="flowmetrics",
    kind="connector",
    config_model=FlowMetricsConfig,
    create=_create,
    description="Retina's adv_* pod-level metrics from the flow records of logs pipelines into metrics pipelines",
    connects=(("logs", "metrics"),),
    reads=_reads,
    sums_flows=True,
)
