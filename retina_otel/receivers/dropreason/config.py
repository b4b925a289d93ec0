"""Configuration of the dropreason receiver."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from retina_otel.receivers._periodic import DrainConfig
from retina_otel.receivers.dropreason.retinanames import ReasonNames

__all__ = ["DropReasonConfig"]


class DropReasonConfig(DrainConfig):
    """How often to drain the kernel's drop counters, how many flows to keep, which reasons to skip."""

    max_flows: int = Field(
        default=16384,
        ge=16,
        le=1 << 22,
        description=(
            "Entries of the in-kernel per-flow drop map (default 16384). Drops of new flows beyond it in one "
            "interval still count in the metrics (a separate per-reason map) but get no flow record; they "
            "are "
            "counted as lost events {type=dropreason, reason=flow_map_full}."
        ),
    )
    reason_names: ReasonNames = Field(
        default="kernel",
        description=(
            "kernel (default): the kernel's skb_drop_reason names (NETFILTER_DROP, NO_SOCKET, ...) and the "
            "observed direction. retina: Retina's names for Retina users' alerts (NETFILTER_DROP -> "
            "IPTABLE_RULE_DROP, TCP_LISTEN_OVERFLOW -> TCP_ACCEPT_BASIC, any other -> UNKNOWN_DROP) on "
            "metrics and flow records, and Retina's direction on drop_count/drop_bytes (unknown, except "
            "TCP_ACCEPT_BASIC: ingress); see docs/receivers/dropreason.md"
        ),
    )
    stack_discards: Literal["separate", "as_drops"] = Field(
        default="separate",
        description=(
            "separate (default): frees that are the stack's own housekeeping, not packets lost on the "
            "network (SOCKET_CLOSE, QUEUE_PURGE, TCP_ABORT_ON_DATA, TCP_RESET, NOT_SPECIFIED, ...: the list "
            "and why each is in docs/receivers/dropreason.md) are counted in "
            "networkobservability_stack_discard_count/_bytes, not in drop_count/drop_bytes, and get no "
            "dropped-flow record. as_drops: counted as drops like every other reason."
        ),
    )
    exclude_reasons: tuple[str, ...] = Field(
        default=(),
        description=(
            "Kernel drop reason names (as in the kfree_skb tracepoint, e.g. NOT_SPECIFIED) not to count "
            "(default none). SKB_NOT_DROPPED_YET and SKB_CONSUMED are never counted: they are not drops."
        ),
    )
