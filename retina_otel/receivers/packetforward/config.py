"""Configuration of the packetforward receiver."""

from __future__ import annotations

from pydantic import Field

from retina_otel.component import ComponentConfig

__all__ = ["PacketForwardConfig"]


class PacketForwardConfig(ComponentConfig):
    """Which interfaces to count on and how often to read the kernel counters."""

    interfaces: tuple[str, ...] = Field(
        default=(),
        description=(
            "Interface names to count on. Default: empty, meaning the host's default-route interface(s) "
            "for IPv4 and IPv6 (from /proc/net/route and /proc/net/ipv6_route), resolved at start."
        ),
    )
    interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between reads of the kernel counters into the metric store (default 10). "
        "Every metrics collection (scrape) also reads them, so exported values are current.",
    )
    count_broadcast_multicast: bool = Field(
        default=False,
        description=(
            "Also count received broadcast, multicast and other-host frames as ingress (default false, "
            "as Retina, which counts only frames addressed to the host and frames the host sends)."
        ),
    )
