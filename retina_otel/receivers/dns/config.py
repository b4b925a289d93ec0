"""Configuration of the dns receiver."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from retina_otel.bpf.links import DEFAULT_POD_INTERFACE_PATTERNS
from retina_otel.component import ComponentConfig

__all__ = ["DnsConfig"]


class DnsConfig(ComponentConfig):
    """Where to listen, how often to publish, and the bounds of the query-to-response matching."""

    source: Literal["auto", "tc", "socket"] = Field(
        default="auto",
        description=(
            "Where DNS packets are taken. `tc`: TC programs -- through packetparser's DNS chain when the agent "
            "has a packetparser receiver (packets that are not DNS cost nothing more), else attached by the "
            "receiver itself to pod veths (`pod_interfaces`) and the host interface (`host_interface`). "
            "`socket`: a packet socket with a DNS-only filter, which taps (and for sent packets clones) every "
            "packet of the node. `auto` (default): `tc`, falling back to `socket` when TC programs cannot be "
            "attached."
        ),
    )
    pod_interfaces: tuple[str, ...] = Field(
        default=DEFAULT_POD_INTERFACE_PATTERNS,
        description=(
            "Glob patterns of host-side pod interfaces the receiver's own TC programs attach to (`tc` without "
            "packetparser; with it, packetparser's `interfaces` apply). Default: as packetparser's."
        ),
    )
    host_interface: str = Field(
        default="auto",
        description=(
            "The node's interface for the receiver's own TC programs (`tc` without packetparser): 'auto' = "
            "the default route's, a name, or 'none'. Default: auto."
        ),
    )
    interfaces: tuple[str, ...] = Field(
        default=(),
        description=(
            "Interface names to watch (resolved to indexes at start; the kernel programs pass only their "
            "packets). Default: empty, meaning every interface of the agent's network namespace (`socket`) "
            "or every interface the TC programs are attached to (`tc`)."
        ),
    )
    interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between publishing metrics and DNS flow records (default 10).",
    )
    query_timeout: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds a query waits for its response before it is dropped from the pending table and "
            "counted as a lost event {type=dns, reason=unanswered_query} (default 5)."
        ),
    )
    max_pending: int = Field(
        default=65536,
        ge=16,
        description=(
            "Queries awaiting a response, at most (default 65536). The oldest is evicted when full and "
            "counted as a lost event {type=dns, reason=pending_table_full}."
        ),
    )
    max_records: int = Field(
        default=200_000,
        ge=16,
        description=(
            "DNS flow records buffered per interval, at most (default 200000). Beyond it packets still count "
            "in the metrics; the missing records are lost events {type=dns, reason=record_buffer_full}."
        ),
    )
    socket_buffer: int = Field(
        default=8 << 20,
        ge=1 << 16,
        description=(
            "Receive buffer of the packet socket in bytes (default 8 MiB, set with SO_RCVBUFFORCE; "
            "`socket` source only)."
        ),
    )
