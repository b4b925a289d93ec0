"""dropreason receiver: packet drops from the ``kfree_skb`` raw tracepoint, with the kernel's own reasons.

Counted in the kernel by (reason, direction, flow) and by (reason, direction); drained every interval
into ``networkobservability_drop_count`` / ``networkobservability_drop_bytes`` {reason, direction} and
into dropped flow records (event DROP, verdict DROPPED, drop_reason). See docs/receivers/dropreason.md.
"""

from __future__ import annotations

from retina_otel.component import Factory
from retina_otel.receivers.dropreason.config import DropReasonConfig
from retina_otel.receivers.dropreason.receiver import DropReasonReceiver

__all__ = ["FACTORY", "DropReasonConfig", "DropReasonReceiver"]


FACTORY: Factory[DropReasonConfig] = Factory(
    type="dropreason",
    kind="receiver",
    config_model=DropReasonConfig,
    create=DropReasonReceiver,  # the constructor takes (settings, config, next_consumer)
    description="Packet drops by kernel drop reason and direction, with dropped flow records (kfree_skb)",
)
