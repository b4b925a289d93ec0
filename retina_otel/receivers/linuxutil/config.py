"""Configuration of the linuxutil receiver."""

from __future__ import annotations

from pydantic import Field

from retina_otel.component import ComponentConfig

__all__ = ["LinuxUtilConfig"]


class LinuxUtilConfig(ComponentConfig):
    """How often to read procfs and ethtool, which interfaces, and the cardinality bound."""

    interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between reads of procfs and ethtool statistics (default 10). A metrics "
        "collection (scrape) also reads them when the last read is older than 1 second.",
    )
    include_interfaces: tuple[str, ...] | None = Field(
        default=None,
        description="Interface names whose ethtool statistics are reported. Default: null, meaning every "
        "interface except loopback (interfaces without ethtool statistics are skipped).",
    )
    max_remote_addresses: int = Field(
        default=100,
        ge=0,
        description="At most this many series of networkobservability_tcp_connection_remote: the remote "
        "addresses with the most TCP sockets (top N, ties broken by address). Default 100; 0 turns the "
        "metric off.",
    )
    include_zero_values: bool = Field(
        default=False,
        description="Also report statistics whose value is 0 (netstat keys and interface statistics). "
        "Default false, as Retina.",
    )
