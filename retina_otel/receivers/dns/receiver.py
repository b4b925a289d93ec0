"""The dns receiver: packet sockets with the DNS-only BPF filter, a reader thread, per-interval publishing."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from retina_otel.component import CreateSettings, FlowConsumer, Host, NopFlowConsumer
from retina_otel.flows import FlowBatch, ip_to_bytes
from retina_otel.metrics.store import Family
from retina_otel.receivers._periodic import Worker, cleanup_bpf
from retina_otel.receivers.dns.config import DnsConfig
from retina_otel.receivers.dns.tracker import DnsTracker

__all__ = ["LATENCY_BOUNDS_MS", "DnsReceiver", "local_addresses"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("dns.bpf.c")
LATENCY_BOUNDS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_ATTACH_BPF = 50
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
_ANC_SIZE = socket.CMSG_SPACE(16)
_TIMESPEC = struct.Struct("@qq")
_BATCH = 512  # packets read per socket before looking at the others


def local_addresses() -> set[bytes]:
    """This namespace's own addresses, in the 16-byte flow form."""
    from pyroute2 import IPRoute

    found: set[bytes] = set()
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if address:
                with contextlib.suppress(ValueError):
                    found.add(ip_to_bytes(address.split("%")[0]))
    return found


class DnsReceiver:
    """See the package docstring. ``flush()`` reads what the sockets hold and publishes now."""

    def __init__(
        self, settings: CreateSettings, config: DnsConfig, next_consumer: FlowConsumer | None
    ) -> None:
        self.settings = settings
        self.config = config
        self._next: FlowConsumer = next_consumer if next_consumer is not None else NopFlowConsumer()
        self._host: Host | None = None
        self._bpf: Any = None
        self._sockets: list[socket.socket] = []
        self._tracker = DnsTracker(
            query_timeout=config.query_timeout,
            max_pending=config.max_pending,
            max_records=config.max_records,
            receiver=settings.id,
        )
        self._local: set[bytes] = set()
        self._ifindex: dict[str, int] = {}
        self._buffer = bytearray(65536)
        self._lock = threading.Lock()  # sockets and tracker
        self._reader = Worker(f"{settings.id}-reader")
        self._requests: Family | None = None
        self._responses: Family | None = None
        self._latency: Family | None = None
        self.packets_read = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        from bcc import BPF

        from retina_otel.bpf import load_bpf

        self._host = host
        self._requests = host.metrics.counter("networkobservability_dns_request_count", "DNS requests")
        self._responses = host.metrics.counter("networkobservability_dns_response_count", "DNS responses")
        self._latency = host.metrics.histogram(
            "networkobservability_dns_response_latency_ms",
            "Time from a DNS query to its response, matched on id and endpoints",
            (),
            LATENCY_BOUNDS_MS,
            unit="ms",
        )
        self._local = local_addresses()
        indexes = [socket.if_nametoindex(name) for name in self.config.interfaces]
        self._bpf = load_bpf(SOURCE, ["-DFILTER_IFINDEX"] if indexes else [])
        if indexes:
            table = self._bpf["dns_ifindexes"]
            for index in indexes:
                table[table.Key(index)] = table.Leaf(1)
        fd = self._bpf.load_func("dns_filter", BPF.SOCKET_FILTER).fd
        try:
            # One socket for all interfaces: a single queue keeps every query ahead of its response.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
            self._socket(fd, sock)
            while True:  # discard what arrived between socket() and the filter
                try:
                    sock.recv(1, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        except BaseException:
            self._close()
            raise
        self._reader.start(self._run)

    def _socket(self, prog_fd: int, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.config.socket_buffer)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        return sock

    def shutdown(self) -> None:
        self._reader.stop(timeout=10)
        with self._lock:
            self._close()

    def _close(self) -> None:
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        bpf, self._bpf = self._bpf, None
        cleanup_bpf(bpf, log, "dns")

    # -- reading ----------------------------------------------------------------------------------
    def _run(self) -> None:
        next_flush = time.monotonic() + self.config.interval
        while not self._reader.stopping:
            sockets = list(self._sockets)
            if not sockets:
                return
            try:
                ready, _, _ = select.select(sockets, [], [], 0.2)
                if ready:
                    with self._lock:
                        self._read(ready)
                if time.monotonic() >= next_flush:
                    next_flush += self.config.interval
                    self.flush()
            except Exception:
                if self._reader.stopping:
                    return
                log.exception("dns: reader failed")
                time.sleep(0.5)

    def _read(self, sockets: list[socket.socket]) -> None:
        """Read what the sockets hold (at most a batch each). Caller holds the lock."""
        tracker, buf, local = self._tracker, self._buffer, self._local
        view = memoryview(buf)
        for sock in sockets:
            for _ in range(_BATCH):
                try:
                    n, anc, _flags, addr = sock.recvmsg_into([buf], _ANC_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                self.packets_read += 1
                ifname, _proto, pkttype = addr[0], addr[1], addr[2]
                data = bytes(view[:n])
                # Every packet crossing an interface here is also received on one (pods' veths) except those
                # this namespace sends itself: take outgoing copies only for those, and never on loopback,
                # where each packet is seen going out and coming in.
                if pkttype == PACKET_OUTGOING and (ifname == "lo" or not self._local_source(data, local)):
                    continue
                ts = time.time_ns()
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                        sec, nsec = _TIMESPEC.unpack_from(payload)
                        ts = sec * 1_000_000_000 + nsec
                tracker.packet(data, ts, self._index(ifname))

    @staticmethod
    def _local_source(data: bytes, local: set[bytes]) -> bool:
        if not data:
            return False
        if data[0] >> 4 == 4:
            return b"\x00" * 10 + b"\xff\xff" + data[12:16] in local
        return data[8:24] in local

    def _index(self, ifname: str) -> int:
        index = self._ifindex.get(ifname)
        if index is None:
            try:
                index = socket.if_nametoindex(ifname)
            except OSError:
                index = 0
            self._ifindex[ifname] = index
        return index

    # -- publishing -------------------------------------------------------------------------------
    def flush(self) -> FlowBatch | None:
        """Read everything queued on the sockets, then publish counts, latencies, losses and records."""
        with self._lock:
            if self._host is None or not self._sockets:
                return None
            while True:
                before = self.packets_read
                self._read(self._sockets)
                if self.packets_read == before:
                    break
            out = self._tracker.take(time.time_ns())
            socket_drops = 0
            for sock in self._sockets:
                _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                socket_drops += drops  # reading the statistics resets them
            with contextlib.suppress(Exception):
                self._local = local_addresses()
            host = self._host
            assert self._requests is not None and self._responses is not None and self._latency is not None
            if out.requests:
                self._requests.add((), out.requests)
            if out.responses:
                self._responses.add((), out.responses)
            if out.latencies_ms:
                self._latency.observe_many((), out.latencies_ms)
            if socket_drops:
                out.lost["socket_buffer_overflow"] += socket_drops
            for reason, count in out.lost.items():
                host.count_lost("dns", reason, count)
            batch = out.batch
            if batch is not None:
                batch.attributes["k8s.node.name"] = host.node_name
        if batch is not None:
            self._next.consume_flows(batch)
        return batch
