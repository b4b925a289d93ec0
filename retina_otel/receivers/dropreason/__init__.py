"""dropreason receiver: packet drops from the ``skb:kfree_skb`` tracepoint, with the kernel's own reasons.

Counted in the kernel by (reason, direction, flow) and by (reason, direction); drained every interval
into ``networkobservability_drop_count`` / ``networkobservability_drop_bytes`` {reason, direction} and
into dropped flow records (event DROP, verdict DROPPED, drop_reason). See docs/receivers/dropreason.md.
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.receivers.dropreason.config import DropReasonConfig
from retina_otel.receivers.dropreason.receiver import DropReasonReceiver

__all__ = ["FACTORY", "DropReasonConfig", "DropReasonReceiver"]


def _create(
    settings: CreateSettings, config: DropReasonConfig, next_consumer: FlowConsumer | None
) -> DropReasonReceiver:
    return DropReasonReceiver(settings, config, next_consumer)


FACTORY: Factory[DropReasonConfig] = Factory(
    type="dropreason",
    kind="receiver",
    config_model=DropReasonConfig,
    create=_create,
    description="Packet drops by kernel drop reason and direction, with dropped flow records (skb:kfree_skb)",
)
