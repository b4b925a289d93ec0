"""The ``tcplatency`` receiver: per-flow TCP handshake latency and smoothed RTT, and Retina's
API-server latency metrics, from tracepoints (no kprobes)."""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.extension_keys import TCP_LATENCY
from retina_otel.receivers.tcplatency.config import TcpLatencyConfig
from retina_otel.receivers.tcplatency.receiver import LatencyTable, TcpLatencyReceiver

__all__ = ["FACTORY", "LatencyTable", "TcpLatencyConfig", "TcpLatencyReceiver"]


def _create(settings: CreateSettings, config: TcpLatencyConfig, _next: FlowConsumer | None) -> TcpLatencyReceiver:
    return TcpLatencyReceiver(settings, config)


FACTORY: Factory[TcpLatencyConfig] = Factory(
    "tcplatency",
    "receiver",
    TcpLatencyConfig,
    _create,
    "TCP handshake latency and smoothed RTT per flow; Retina's API-server latency (tracepoints)",
    signals=("metrics",),
    provides=(TCP_LATENCY,),
)
