"""dns receiver: DNS over UDP and TCP, IPv4 and IPv6, ports 53 and 5353.

Packets come from packetparser's TC programs through its DNS chain (``source: tc``, the default when the
agent has packetparser) or from a packet socket with a DNS-only filter (``source: socket``). Only DNS
reaches user space, which parses it (a bounds-checked parser, see
``parser.py``), counts ``networkobservability_dns_request_count`` / ``dns_response_count``, matches
responses to queries for latency, and emits one flow record per DNS message with ``batch.dns`` side
entries (query, answers, query_type, return_code). See docs/receivers/dns.md.
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer
from retina_otel.receivers.dns.config import DnsConfig
from retina_otel.receivers.dns.receiver import DnsReceiver

__all__ = ["FACTORY", "DnsConfig", "DnsReceiver"]


def _create(settings: CreateSettings, config: DnsConfig, next_consumer: FlowConsumer | None) -> DnsReceiver:
    return DnsReceiver(settings, config, next_consumer)


FACTORY: Factory[DnsConfig] = Factory(
    type="dns",
    kind="receiver",
    config_model=DnsConfig,
    create=_create,
    description=(
        "DNS requests and responses with query, type, rcode, answers and latency (packetparser's DNS chain "
        "or a packet socket)"
    ),
)
