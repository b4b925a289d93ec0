"""Parsers for the procfs files linuxutil reads. Pure functions over text, so fixtures can test them.

Paths default to ``/proc/thread-self/net``: ``/proc/net`` is ``/proc/self/net`` and follows the network
namespace of the process's main thread, while ``thread-self`` follows the calling thread's namespace (so a
thread that ``setns``-ed into a pod reads that pod's tables).
"""

from __future__ import annotations

import functools
import ipaddress
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NETSTAT_CURATED_KEYS",
    "PROC_NET",
    "TCP_STATES",
    "ConnectionStats",
    "SocketSummary",
    "connection_stats",
    "curated",
    "decode_address",
    "parse_netstat",
    "parse_sockets",
    "read_connection_stats",
    "read_socket_summary",
]

PROC_NET = Path("/proc/thread-self/net")

NETSTAT_CURATED_KEYS: frozenset[str] = frozenset(
    {
        "ListenDrops",
        "LockDroppedIcmps",
        "PFMemallocDrop",
        "TCPBacklogDrop",
        "TCPDeferAcceptDrop",
        "TCPMinTTLDrop",
        "TCPRcvQDrop",
        "TCPReqQFullDrop",
        "TCPZeroWindowDrop",
        "InCsumErrors",
        "DataCsumErr",
        "AddAddrDrop",
        "RmAddrDrop",
        "TCPTimeouts",
        "TCPLossProbes",
        "TCPLostRetransmit",
    }
)
"""Retina's curated /proc/net/netstat keys; everything else is left out."""

# include/net/tcp_states.h; names as Retina reports them (go-netstat's), CLOSE spelled out.
TCP_STATES: dict[int, str] = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
}


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/netstat`` or ``/proc/net/snmp`` as ``{section: {key: value}}``.

    Both files are pairs of lines, ``Section: key key ...`` then ``Section: value value ...``; a pair whose
    sections differ or whose lengths differ is skipped (as Retina does), as are non-numeric values.
    Values can be negative (``Tcp: MaxConn -1``).
    """
    out: dict[str, dict[str, int]] = {}
    lines = [line for line in text.splitlines() if line.strip()]
    for head, vals in zip(lines[0::2], lines[1::2], strict=False):
        keys = head.split()
        values = vals.split()
        if len(keys) < 2 or len(keys) != len(values) or keys[0] != values[0] or not keys[0].endswith(":"):
            continue
        section = out.setdefault(keys[0][:-1], {})
        for key, raw in zip(keys[1:], values[1:], strict=True):
            try:
                section[key] = int(raw)
            except ValueError:
                continue
    return out


def curated(section: Mapping[str, int], *, include_zero: bool) -> dict[str, int]:
    """The curated keys of one section, zero values dropped unless asked (Retina drops them)."""
    return {k: v for k, v in section.items() if k in NETSTAT_CURATED_KEYS and (include_zero or v != 0)}


def decode_address(hex_addr: str) -> str:
    """An address from /proc/net/{tcp,udp}[6] (``0100007F`` or 32 hex digits) in text form.

    The kernel prints each 32-bit word of the address in host byte order. IPv4-mapped IPv6 addresses
    come back as plain IPv4.
    """
    raw = b"".join(int(hex_addr[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hex_addr), 8))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


@dataclass(frozen=True, slots=True)
class SocketSummary:
    """TCP sockets by state and by remote address, and how many UDP sockets exist."""

    tcp_by_state: Mapping[str, int] = field(default_factory=dict)
    tcp_by_remote: Mapping[str, int] = field(default_factory=dict)
    udp_sockets: int = 0


@functools.lru_cache(maxsize=65536)
def _peer(hex_addr: str) -> str | None:
    """The remote address in text form, or None for unspecified (listeners) and loopback remotes, which
    say nothing about the node's peers. Cached: a node's sockets share few remote addresses."""
    address = decode_address(hex_addr)
    ip = ipaddress.ip_address(address)
    return None if ip.is_unspecified or ip.is_loopback else address


def parse_sockets(texts: Iterable[str]) -> tuple[Counter[str], Counter[str], int]:
    """Rows of /proc/net/tcp-like tables: (by state name, by remote address, number of rows)."""
    by_state: Counter[str] = Counter()
    by_remote: Counter[str] = Counter()
    rows = 0
    for text in texts:
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) < 4 or ":" not in f[2]:
                continue
            rows += 1
            try:
                state = int(f[3], 16)
                remote = _peer(f[2].partition(":")[0])
            except ValueError:
                continue
            by_state[TCP_STATES.get(state, f"UNKNOWN_{state}")] += 1
            if remote is not None:
                by_remote[remote] += 1
    return by_state, by_remote, rows


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # tcp6/udp6 are absent when IPv6 is disabled
        return ""


def read_socket_summary(proc_net: Path = PROC_NET) -> SocketSummary:
    """TCP (v4 and v6) states and remote addresses, and the UDP (v4 and v6) socket count."""
    by_state, by_remote, _ = parse_sockets(_read(proc_net / name) for name in ("tcp", "tcp6"))
    _, _, udp = parse_sockets(_read(proc_net / name) for name in ("udp", "udp6"))
    return SocketSummary(dict(by_state), dict(by_remote), udp)


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """The curated statistics, split the way Retina publishes them."""

    tcp: Mapping[str, int]  # TcpExt + MPTcpExt -> tcp_connection_stats
    ip: Mapping[str, int]  # IpExt -> ip_connection_stats
    udp: Mapping[str, int]  # snmp Udp -> udp_connection_stats (beyond Retina, which has only ACTIVE)


def connection_stats(
    netstat: Mapping[str, Mapping[str, int]], snmp: Mapping[str, Mapping[str, int]], *, include_zero: bool
) -> ConnectionStats:
    tcp = curated(netstat.get("TcpExt", {}), include_zero=include_zero)
    tcp.update(curated(netstat.get("MPTcpExt", {}), include_zero=include_zero))
    ip = curated(netstat.get("IpExt", {}), include_zero=include_zero)
    udp = curated(snmp.get("Udp", {}), include_zero=include_zero)
    return ConnectionStats(tcp, ip, udp)


def read_connection_stats(proc_net: Path = PROC_NET, *, include_zero: bool = False) -> ConnectionStats:
    return connection_stats(
        parse_netstat(_read(proc_net / "netstat")),
        parse_netstat(_read(proc_net / "snmp")),
        include_zero=include_zero,
    )
