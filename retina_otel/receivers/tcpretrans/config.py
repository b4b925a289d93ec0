"""Configuration of the tcpretrans receiver."""

from __future__ import annotations

from pydantic import Field

from retina_otel.receivers._periodic import DrainConfig

__all__ = ["TcpRetransConfig"]


class TcpRetransConfig(DrainConfig):
    """How often to drain the kernel's retransmission counters and how many flows to keep per interval."""

    max_flows: int = Field(
        default=16384,
        ge=16,
        le=1 << 22,
        description=(
            "Entries of the in-kernel per-flow map (default 16384). Retransmissions of flows beyond it in "
            "one interval still count in networkobservability_tcpretrans_count but get no flow record; "
            "they are counted as lost events {type=tcpretrans, reason=flow_map_full}."
        ),
    )
    include_synack: bool = Field(
        default=True,
        description=(
            "Also count SYN-ACK retransmissions of listening sockets (tcp:tcp_retransmit_synack), as the "
            "kernel's TcpRetransSegs does (default true)."
        ),
    )
