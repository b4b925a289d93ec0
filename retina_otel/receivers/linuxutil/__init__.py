"""linuxutil receiver: Retina's node statistics from procfs and ethtool, read-only, no BPF.

Publishes ``networkobservability_tcp_state``, ``tcp_connection_remote``, ``tcp_connection_stats``,
``ip_connection_stats``, ``udp_connection_stats`` and ``interface_stats`` (all gauges).
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.receivers.linuxutil.config import LinuxUtilConfig
from retina_otel.receivers.linuxutil.receiver import LinuxUtilReceiver

__all__ = ["FACTORY", "LinuxUtilConfig", "LinuxUtilReceiver"]


def _create(settings: CreateSettings, config: LinuxUtilConfig, next_consumer: FlowConsumer | None) -> LinuxUtilReceiver:
    return LinuxUtilReceiver(settings, config)


FACTORY: Factory[LinuxUtilConfig] = Factory(
    type="linuxutil",
    kind="receiver",
    config_model=LinuxUtilConfig,
    create=_create,
    description="TCP states, remote addresses, netstat/snmp statistics and ethtool interface statistics",
    signals=("metrics",),
)
