"""The dns receiver's socket source: one AF_PACKET SOCK_DGRAM socket bound to ETH_P_ALL, with the
DNS-only socket filter of ``dns.bpf.c``.

A packet socket is a tap on every interface: the kernel clones every transmitted skb for it and runs the
filter on every packet, DNS or not (about 14% of a node's 64-byte UDP packet rate, measured). The TC
source avoids that where packetparser runs; this one needs nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retina_otel.receivers._periodic import cleanup_bpf
from retina_otel.receivers.dns.config import DnsConfig
from retina_otel.receivers.dns.tracker import DnsTracker

__all__ = ["IfindexCache", "SocketSource"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("dns.bpf.c")
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_ATTACH_BPF = 50
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
_ANC_SIZE = socket.CMSG_SPACE(16)
_TIMESPEC = struct.Struct("@qq")
_BATCH = 512  # packets read per call


class SocketSource:
    name = "socket"

    def __init__(self, config: DnsConfig, indexes: list[int]) -> None:
        from bcc import BPF

        from retina_otel.bpf import load_bpf

        self._local: set[bytes] = set()
        self._ifindex = IfindexCache()
        self._buffer = bytearray(65536)
        self._sock: socket.socket | None = None
        self._bpf: Any = load_bpf(SOURCE, ["-DFILTER_IFINDEX"] if indexes else [])
        try:
            if indexes:
                table = self._bpf["dns_ifindexes"]
                for index in indexes:
                    table[table.Key(index)] = table.Leaf(1)
            fd = self._bpf.load_func("dns_filter", BPF.SOCKET_FILTER).fd
            # One socket for all interfaces: a single queue keeps every query ahead of its response.
            self._sock = sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, fd)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, config.socket_buffer)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setblocking(False)
            while True:  # discard what arrived between socket() and the filter
                try:
                    sock.recv(1, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        return [self._sock.fileno()] if self._sock is not None else []

    def set_local(self, local: set[bytes]) -> None:
        self._local = local

    def read(self, tracker: DnsTracker) -> int:
        sock, buf, local = self._sock, self._buffer, self._local
        if sock is None:
            return 0
        view = memoryview(buf)
        n_read = 0
        for _ in range(_BATCH):
            try:
                n, anc, _flags, addr = sock.recvmsg_into([buf], _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            n_read += 1
            ifname, _proto, pkttype = addr[0], addr[1], addr[2]
            data = bytes(view[:n])
            # Every packet crossing an interface here is also received on one (pods' veths) except those
            # this namespace sends itself: take outgoing copies only for those, and never on loopback,
            # where each packet is seen going out and coming in.
            if pkttype == PACKET_OUTGOING and (ifname == "lo" or not _local_source(data, local)):
                continue
            ts = time.time_ns()
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    ts = sec * 1_000_000_000 + nsec
            tracker.packet(data, ts, self._index(ifname))
        return n_read

    def take_lost(self) -> dict[str, int]:
        if self._sock is None:
            return {}
        _packets, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return {"socket_buffer_overflow": drops} if drops else {}  # reading the statistics resets them

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        bpf, self._bpf = self._bpf, None
        cleanup_bpf(bpf, log, "dns")

    def _index(self, ifname: str) -> int:
        return self._ifindex.index(ifname)


class IfindexCache:
    """Interface name -> ifindex (the packet socket reports names), bounded under veth churn: at most
    ``max_entries`` names, each trusted for ``ttl`` seconds (a name can come back as another link)."""

    def __init__(self, max_entries: int = 1024, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def index(self, ifname: str) -> int:
        now = self._clock()
        cached = self._entries.get(ifname)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            index = 0
        if len(self._entries) >= self._max:
            self._entries = {k: v for k, v in self._entries.items() if now - v[1] < self._ttl}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[ifname] = (index, now)
        return index


def _local_source(data: bytes, local: set[bytes]) -> bool:
    if not data:
        return False
    if data[0] >> 4 == 4:
        return b"\x00" * 10 + b"\xff\xff" + data[12:16] in local
    return data[8:24] in local
