"""The ``nodeconnectivity`` receiver: Retina's node-to-node connectivity gauges, from HTTP probes of the
other nodes' agents (their health port), nodes taken from the agent's watch cache."""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.receivers.nodeconnectivity.config import NodeConnectivityConfig
from retina_otel.receivers.nodeconnectivity.receiver import NodeConnectivityReceiver

__all__ = ["FACTORY", "NodeConnectivityConfig", "NodeConnectivityReceiver"]


def _create(
    settings: CreateSettings, config: NodeConnectivityConfig, _next: FlowConsumer | None
) -> NodeConnectivityReceiver:
    return NodeConnectivityReceiver(settings, config)


FACTORY: Factory[NodeConnectivityConfig] = Factory(
    "nodeconnectivity",
    "receiver",
    NodeConnectivityConfig,
    _create,
    "Retina's node_connectivity_status/latency_seconds: HTTP probes of the other nodes' agents (health port)",
    signals=("metrics",),
)
