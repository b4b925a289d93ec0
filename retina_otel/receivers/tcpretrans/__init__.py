"""tcpretrans receiver: TCP retransmissions per flow from the ``tcp:tcp_retransmit_skb`` tracepoint.

Counted in the kernel per flow (IPv4 and IPv6) in segments, like the kernel's ``TcpRetransSegs``;
drained every interval into flow records (event RETRANSMIT, direction egress, ``retransmits``) and the
node total ``networkobservability_tcpretrans_count``. See docs/receivers/tcpretrans.md.
"""

from __future__ import annotations

from retina_otel.component import Factory
from retina_otel.receivers.tcpretrans.config import TcpRetransConfig
from retina_otel.receivers.tcpretrans.receiver import TcpRetransReceiver

__all__ = ["FACTORY", "TcpRetransConfig", "TcpRetransReceiver"]


FACTORY: Factory[TcpRetransConfig] = Factory(
    type="tcpretrans",
    kind="receiver",
    config_model=TcpRetransConfig,
    create=TcpRetransReceiver,  # the constructor takes (settings, config, next_consumer)
    description="TCP retransmissions per flow, IPv4 and IPv6 (tcp:tcp_retransmit_skb tracepoint)",
)
