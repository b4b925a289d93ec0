"""The IPs-of-interest filter: an LPM trie the kernel consults before counting a packet.

With ``bypass_lookup_ip_of_interest: true`` (the default) the program skips the lookup and reports
every flow. With ``false`` only packets whose source or destination matches an entry are counted;
entries are added and removed at run time through :class:`IpFilter`.

Wiring: the packetparser receiver (which implements :class:`IpFilter`) offers itself under the typed
key ``IP_FILTER`` (:mod:`retina_otel.extension_keys`) from ``extensions()``; the agent registers it,
and the k8sattributes processor looks it up with ``host.get_extension(IP_FILTER)``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

__all__ = ["IpFilter", "lpm_key"]


@runtime_checkable
class IpFilter(Protocol):
    def add_ips(self, ips: list[str]) -> None:
        """Add addresses or CIDR prefixes (IPv4 or IPv6) to the IPs of interest."""

    def remove_ips(self, ips: list[str]) -> None:
        """Remove addresses or prefixes added before; unknown ones are ignored."""


def lpm_key(text: str) -> bytes:
    """The kernel's ``struct lpm_key`` (prefix length, then 16 bytes, IPv4 mapped into IPv6)."""
    net = ipaddress.ip_network(text, strict=False)
    if net.version == 4:
        addr = b"\x00" * 10 + b"\xff\xff" + net.network_address.packed
        plen = net.prefixlen + 96
    else:
        addr = net.network_address.packed
        plen = net.prefixlen
    return plen.to_bytes(4, "little") + addr


def lpm_keys(ips: Iterable[str]) -> list[bytes]:
    return [lpm_key(ip) for ip in ips]
