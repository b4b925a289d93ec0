"""Configuration of the packetparser receiver."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from retina_otel.bpf.links import DEFAULT_POD_INTERFACE_PATTERNS
from retina_otel.bpf.ringsize import check_ring_size
from retina_otel.component import ComponentConfig

__all__ = ["DEFAULT_INTERFACE_PATTERNS", "PacketParserConfig"]

DEFAULT_INTERFACE_PATTERNS = DEFAULT_POD_INTERFACE_PATTERNS


class PacketParserConfig(ComponentConfig):
    interfaces: tuple[str, ...] = Field(
        default=DEFAULT_INTERFACE_PATTERNS,
        description=(
            "Glob patterns of host-side pod interfaces to observe (ingress and egress). Default: veth*, "
            "azv* (Azure CNI), cali* (Calico), lxc* (Cilium), ro* (the retina-otel sandbox)."
        ),
    )
    host_interface: str = Field(
        default="auto",
        description=(
            "The node's interface: 'auto' = the interface of the IPv4 (else IPv6) default route, a name, "
            "or 'none'. Default: auto."
        ),
    )
    attach_mode: Literal["auto", "tcx", "clsact"] = Field(
        default="auto",
        description=(
            "How the programs hook the interfaces. tcx: TCX links (Linux >= 6.6), no qdisc or filter; the "
            "kernel detaches them when the agent exits, even when it is killed; on a kernel without TCX the "
            "agent refuses the config (exit 2). clsact: a clsact qdisc and a cls_bpf filter (any kernel; a "
            "killed agent leaves its filters until the next start replaces them). auto: tcx where the kernel "
            "offers it, else clsact. Default: auto."
        ),
    )
    aggregation: Literal["low", "high"] = Field(
        default="high",
        description=(
            "low: one record per packet. high: per connection in the kernel, a record when report_rule "
            "says; counters in between ride on the next record. Default: high."
        ),
    )
    report_rule: Literal["auto", "events", "close"] = Field(
        default="auto",
        description=(
            "When high aggregation writes a record. events (Retina's rule): on SYN/FIN/RST/URG/ECE/CWR, "
            "on flags new to the direction, on a new connection and when the report interval passed. "
            "close: only on FIN or RST and when the report interval passed; the rest of a flow's counts "
            "ride on its next record or on the flush every report interval (fewer records, same counts). "
            "auto: close when everything that reads this receiver's flow records only sums them (the "
            "embedded default: flowmetrics alone); switched at run time when the observer exporter is among "
            "them (events while a client follows live flows, close otherwise: its event_records); events "
            "otherwise (otlp, spans, hubblemetrics, filters). Default: auto."
        ),
    )
    report_on_close: Literal["auto", "always"] = Field(
        default="auto",
        description=(
            "The close rule's record on FIN or RST. always: every time. auto: only while the connection "
            "table could fill up before the next flush (the LRU could then evict a finished connection's "
            "unreported counts); otherwise a finished connection's counts go out with the flush every "
            "report interval, in fewer records. Judged every second from the entries created; a burst "
            "that creates a quarter of conntrack_max_entries within that second turns the records back on "
            "in the kernel at once. Default: auto."
        ),
    )
    report_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between reports of one flow direction, and between flushes of idle flows. Default: 30.",
    )
    sampling_rate: int = Field(
        default=1,
        ge=1,
        description="Consider a packet with probability 1/rate (SYN/FIN/RST always). 1 = every packet. Default: 1.",
    )
    conntrack_max_entries: int = Field(
        default=262144, ge=1024, description="Size of the in-kernel LRU connection table (entries). Default: 262144."
    )
    ring_buffer_size: int = Field(
        default=8 * 1024 * 1024,
        description=(
            "Ring buffer size in bytes: a power of two, at least the node's page size (4 KiB on x86_64; "
            "4, 16 or 64 KiB on arm64). Default: 8 MiB."
        ),
    )
    filter_map_max_entries: int = Field(
        default=255, ge=1, description="Capacity of the LPM trie of IPs of interest (entries). Default: 255."
    )
    bypass_lookup_ip_of_interest: bool = Field(
        default=True,
        description=(
            "true: report every flow (skip the filter map). false: only flows to/from IPs in it. Default: true."
        ),
    )
    enable_conntrack_metrics: bool = Field(
        default=True,
        description="Publish Retina's networkobservability_conntrack_* gauges (the live connection table; the "
        "kernel then keeps per-connection lifetime totals) and the networkobservability_packetparser_* counters "
        "(sums of the flow records). Default: true.",
    )
    batch_interval: float = Field(
        default=0.5,
        gt=0,
        le=1.0,
        description="Seconds between flow batches handed to the next consumer (at most 1). Default: 0.5.",
    )
    max_batch_size: int = Field(
        default=16384, ge=1, description="Rows per flow batch before it is sent early. Default: 16384."
    )
    rescan_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between safety-net interface rescans (link events trigger one at once). Default: 30.",
    )

    @field_validator("ring_buffer_size")
    @classmethod
    def _valid_ring_size(cls, v: int) -> int:
        return check_ring_size(v)
