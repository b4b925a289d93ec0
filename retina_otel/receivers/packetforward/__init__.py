"""packetforward receiver: node-level forwarded packets and bytes by direction, counted in the kernel.

A socket filter on an AF_PACKET socket per interface counts frames in per-CPU maps; the receiver reads
the totals every ``interval`` (and on each metrics collection) into ``networkobservability_forward_count``
and ``networkobservability_forward_bytes`` with label ``direction``. TC is left alone.
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.receivers.packetforward.config import PacketForwardConfig
from retina_otel.receivers.packetforward.receiver import PacketForwardReceiver, default_route_interfaces

__all__ = ["FACTORY", "PacketForwardConfig", "PacketForwardReceiver", "default_route_interfaces"]


def _create(
    settings: CreateSettings, config: PacketForwardConfig, next_consumer: FlowConsumer | None
) -> PacketForwardReceiver:
    return PacketForwardReceiver(settings, config)


FACTORY: Factory[PacketForwardConfig] = Factory(
    type="packetforward",
    kind="receiver",
    config_model=PacketForwardConfig,
    create=_create,
    description="Node totals of forwarded packets and bytes by direction (socket filter, per-CPU counters)",
    signals=("metrics",),
)
