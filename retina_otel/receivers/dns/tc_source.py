"""The dns receiver's TC source: ``dns_tc.bpf.c`` programs plugged into packetparser's DNS chain.

packetparser's TC programs (pod veths, host interface) tail-call these for UDP/TCP packets with port 53
or 5353 after counting them, so packets that are not DNS pay nothing for the dns receiver. The programs
write one record per DNS packet to a ring buffer (header + packet from the network header on); records
are read here with bcc's ring-buffer callback (DNS rates are low) and fed to the tracker in order.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import struct
from pathlib import Path
from typing import Any

from retina_otel.bpf.chain import OBSERVATION_POINTS, ProgramChain
from retina_otel.bpf.clock import wall_offset_ns
from retina_otel.bpf.ringsize import ring_pages
from retina_otel.receivers._periodic import cleanup_bpf
from retina_otel.receivers.dns.tracker import DnsTracker

__all__ = ["RINGBUF_SIZE", "SNAP_LEN", "TC_STAT_NAMES", "TcSource"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("dns_tc.bpf.c")
SNAP_LEN = 4096
"""Bytes of a packet (from the network header) a record carries; longer messages are lost events."""
RINGBUF_SIZE = 4 << 20
TC_STAT_NAMES = ("written", "ringbuf_full", "duplicate")
_HDR = struct.Struct("<QIIHB5x")  # struct dns_hdr: ts_ns, ifindex, orig_len, cap_len, obs


class TcSource:
    name = "tc"

    def __init__(self, chain: ProgramChain, indexes: list[int]) -> None:
        from bcc import BPF

        from retina_otel.bpf import load_bpf

        self._chain = chain
        self._plugged = False
        self._tracker: DnsTracker | None = None
        self._offset_ns = 0
        self._read = 0
        self._truncated = 0
        self._last_full = 0
        cflags = [f"-DSNAP_LEN={SNAP_LEN}", f"-DRINGBUF_PAGES={ring_pages(RINGBUF_SIZE)}"]
        self._bpf: Any = load_bpf(SOURCE, cflags + (["-DFILTER_IFINDEX"] if indexes else []))
        try:
            if indexes:
                table = self._bpf["dns_ifindexes"]
                for index in indexes:
                    table[table.Key(index)] = table.Leaf(1)
            self._local_table = self._bpf["dns_local"]
            self._local: set[bytes] = set()
            events = self._bpf["dns_events"]
            self._ring_fd = int(events.map_fd)
            events.open_ring_buffer(self._on_record)
            programs = {
                point: int(self._bpf.load_func(f"dns_{point}", BPF.SCHED_CLS).fd) for point in OBSERVATION_POINTS
            }
            chain.plug(programs)
            self._plugged = True
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        return [self._ring_fd] if self._bpf is not None else []

    def set_local(self, local: set[bytes]) -> None:
        """Keep the kernel's dns_local map equal to ``local`` (the TO_* copies the programs take)."""
        if self._bpf is None:
            return
        table = self._local_table
        for addr in local - self._local:
            table[table.Key.from_buffer_copy(addr)] = table.Leaf(1)
        for addr in self._local - local:
            with contextlib.suppress(KeyError):
                del table[table.Key.from_buffer_copy(addr)]
        self._local = set(local)

    def read(self, tracker: DnsTracker) -> int:
        if self._bpf is None:
            return 0
        self._tracker, self._read = tracker, 0
        self._offset_ns = wall_offset_ns()
        try:
            self._bpf.ring_buffer_consume()
        finally:
            self._tracker = None
        return self._read

    def _on_record(self, _ctx: Any, data: int, size: int) -> int:
        tracker = self._tracker
        if tracker is None or size < _HDR.size:
            return 0
        raw = ctypes.string_at(data, size)
        ts, ifindex, orig_len, cap_len, _obs = _HDR.unpack_from(raw)
        self._read += 1
        if cap_len < orig_len:
            self._truncated += 1  # longer than SNAP_LEN: the message cannot be parsed whole
            return 0
        tracker.packet(raw[_HDR.size : _HDR.size + cap_len], ts + self._offset_ns, ifindex)
        return 0

    def stats(self) -> dict[str, int]:
        """The programs' per-CPU statistics, summed (names in TC_STAT_NAMES)."""
        if self._bpf is None:
            return {}
        table = self._bpf["dns_stats"]
        return {name: int(sum(table[ctypes.c_int(i)])) for i, name in enumerate(TC_STAT_NAMES)}

    def take_lost(self) -> dict[str, int]:
        lost: dict[str, int] = {}
        full = self.stats().get("ringbuf_full", self._last_full)
        if full > self._last_full:
            lost["ringbuf_full"] = full - self._last_full
        self._last_full = full
        if self._truncated:
            lost["message_truncated"] = self._truncated
            self._truncated = 0
        return lost

    def close(self) -> None:
        if self._plugged:
            self._plugged = False
            try:
                self._chain.unplug()
            except Exception:
                log.exception("dns: unplugging from the DNS chain failed")
        bpf, self._bpf = self._bpf, None
        cleanup_bpf(bpf, log, "dns")
