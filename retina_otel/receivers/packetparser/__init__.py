"""packetparser receiver: every flow on the node, counted in the kernel (TC programs, TCX or clsact, on pod
veths and the host interface), reported as flow records. See docs/receivers/packetparser.md."""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer, Lifecycle
from retina_otel.extension_keys import DNS_CHAIN, IP_FILTER

from .config import PacketParserConfig
from .filtermap import IpFilter

__all__ = ["FACTORY", "IpFilter", "PacketParserConfig"]


def _create(settings: CreateSettings, config: PacketParserConfig, next_consumer: FlowConsumer | None) -> Lifecycle:
    from .receiver import PacketParserReceiver  # bcc and pyroute2 only when used

    return PacketParserReceiver(settings, config, next_consumer)


FACTORY: Factory[PacketParserConfig] = Factory(
    type="packetparser",
    kind="receiver",
    config_model=PacketParserConfig,
    create=_create,
    description="Flow records of every pod and the host from TC eBPF programs, aggregated in the kernel",
    provides=(IP_FILTER, DNS_CHAIN),
)
