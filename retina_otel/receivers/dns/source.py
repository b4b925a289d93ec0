"""Where the dns receiver's packets come from: the protocol both sources implement.

* :class:`~.socket_source.SocketSource`: an AF_PACKET socket with a DNS-only socket filter (the
  receiver alone; a tap on every interface, which costs every packet of the node something).
* :class:`~.tc_source.TcSource`: programs tail-called by packetparser's TC programs for DNS-port packets
  only, writing to a ring buffer (no cost to other packets beyond packetparser's own).
"""

from __future__ import annotations

from typing import Protocol

from retina_otel.receivers.dns.tracker import DnsTracker

__all__ = ["PacketSource"]


class PacketSource(Protocol):
    name: str

    def fds(self) -> list[int]:
        """File descriptors that become readable when packets wait (for ``select``)."""

    def read(self, tracker: DnsTracker) -> int:
        """Feed what is waiting (a bounded batch) to ``tracker.packet``; returns the packets read."""

    def take_lost(self) -> dict[str, int]:
        """Lost events since the last call, by reason."""

    def set_local(self, local: set[bytes]) -> None:
        """The namespace's own addresses (16-byte flow form): sent copies are taken only from them."""

    def close(self) -> None:
        """Release everything (idempotent)."""
