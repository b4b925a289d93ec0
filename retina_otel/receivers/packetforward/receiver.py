"""The packetforward receiver: one socket filter, one AF_PACKET socket per interface, per-CPU totals.

The BPF program is loaded once and shared by every interface's socket, so the totals are node totals
(the sum over the configured interfaces), as Retina reports them. The receiver opens the sockets itself
(rather than bcc's ``attach_raw_socket``, which never closes its socket) in three steps so that no frame
is ever queued before the filter is in place: ``socket(AF_PACKET, SOCK_RAW, 0)`` (protocol 0 receives
nothing), ``SO_ATTACH_BPF``, then ``bind((ifname, ETH_P_ALL))``.

An interface that disappears is detected on the next read (its index is gone or changed): its socket is
closed, and a new one is bound if an interface of that name comes back. The counters in the kernel map
keep running, so the exported totals stay monotonic.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retina_otel.bpf import load_bpf
from retina_otel.component import ComponentStatus, CreateSettings, Host
from retina_otel.metrics.store import Family
from retina_otel.receivers._periodic import Worker
from retina_otel.receivers.packetforward.config import PacketForwardConfig

__all__ = ["PacketForwardReceiver", "default_route_interfaces"]

log = logging.getLogger(__name__)

BPF_SOURCE = Path(__file__).with_name("packetforward.bpf.c")
ETH_P_ALL = 0x0003
SO_ATTACH_BPF = 50
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200
INGRESS_KEY = 0
EGRESS_KEY = 1
FORWARD_COUNT = "networkobservability_forward_count"
FORWARD_BYTES = "networkobservability_forward_bytes"


def default_route_interfaces(
    route_path: str = "/proc/net/route", ipv6_route_path: str = "/proc/net/ipv6_route"
) -> list[str]:
    """Interfaces that carry a default route (IPv4 first, then IPv6), without duplicates."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path(route_path).read_text().splitlines()[1:]:
            f = line.split()
            if len(f) < 8:
                continue
            iface, dest, flags, mask = f[0], f[1], int(f[3], 16), f[7]
            if dest == "00000000" and mask == "00000000" and flags & _RTF_UP and iface not in found:
                found.append(iface)
    with contextlib.suppress(OSError):
        for line in Path(ipv6_route_path).read_text().splitlines():
            f = line.split()
            if len(f) < 10:
                continue
            dest, plen, flags, iface = f[0], f[1], int(f[8], 16), f[9]
            default = int(dest, 16) == 0 and int(plen, 16) == 0
            usable = flags & _RTF_UP and not flags & _RTF_REJECT and iface != "lo"
            if default and usable and iface not in found:
                found.append(iface)
    return found


def _ifindex(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


@dataclass
class _Tap:
    """One interface's AF_PACKET socket (None while the interface is absent)."""

    name: str
    sock: socket.socket | None = None
    ifindex: int | None = None


class PacketForwardReceiver:
    """Counts frames on the configured interfaces in the kernel and publishes node totals."""

    def __init__(self, settings: CreateSettings, config: PacketForwardConfig) -> None:
        self.settings = settings
        self.config = config
        self._lock = threading.Lock()
        self._poller = Worker(f"{settings.id}-poll")
        self._bpf: Any = None
        self._prog_fd: int | None = None
        self._table: Any = None
        self._taps: list[_Tap] = []
        self._host: Host | None = None
        self._count: Family | None = None
        self._bytes: Family | None = None
        self._running = False

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def interfaces(self) -> list[str]:
        """The interfaces being counted on (resolved at start)."""
        return [t.name for t in self._taps]

    def start(self, host: Host) -> None:
        self._host = host
        try:
            self._start(host)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, host: Host) -> None:
        names = list(self.config.interfaces) or default_route_interfaces()
        if not names:
            raise RuntimeError(
                "packetforward: no interfaces configured and no default-route interface found in "
                "/proc/net/route or /proc/net/ipv6_route; set 'interfaces'"
            )
        missing = [n for n in names if _ifindex(n) is None]
        if missing:
            raise RuntimeError(f"packetforward: interface(s) not found: {', '.join(missing)}")
        cflags = [f"-DPF_COUNT_OTHER={1 if self.config.count_broadcast_multicast else 0}"]
        self._bpf = load_bpf(BPF_SOURCE, cflags)
        from bcc import BPF

        fn = self._bpf.load_func(b"packetforward_filter", BPF.SOCKET_FILTER)
        self._prog_fd = int(fn.fd)
        self._table = self._bpf[b"pf_metrics"]
        self._count = host.metrics.counter(FORWARD_COUNT, "Total forwarded packets", ("direction",))
        self._bytes = host.metrics.counter(FORWARD_BYTES, "Total forwarded bytes", ("direction",), unit="By")
        for name in dict.fromkeys(names):
            tap = _Tap(name)
            self._taps.append(tap)
            self._open(tap, raise_errors=True)
        self._running = True
        host.metrics.add_collect_hook(self._on_collect)
        self.refresh()
        # Keep counting when a read fails; the next round may succeed.
        self._poller.run_every(
            self.config.interval, self.refresh, log=log, failure="packetforward: reading counters failed"
        )
        host.report_status(self.settings.id, ComponentStatus.OK, f"counting on {', '.join(self.interfaces)}")

    def shutdown(self) -> None:
        self._poller.stop(timeout=5)
        with self._lock:
            self._running = False
            for tap in self._taps:
                self._close(tap)
            self._taps = []
            bpf, self._bpf = self._bpf, None
            self._table = None
            self._prog_fd = None
            if bpf is not None:
                with contextlib.suppress(Exception):
                    bpf.cleanup()  # closes the program fd and the map fds

    # -- sockets --------------------------------------------------------------------------------
    def _open(self, tap: _Tap, *, raise_errors: bool) -> None:
        assert self._prog_fd is not None
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, struct.pack("i", self._prog_fd))
            sock.bind((tap.name, ETH_P_ALL))
            # The filter returns 0 for every frame; a minimal buffer makes that a hard guarantee.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        except OSError as exc:
            sock.close()
            if raise_errors:
                raise RuntimeError(f"packetforward: cannot attach to interface {tap.name!r}: {exc}") from exc
            log.debug("packetforward: cannot attach to %s: %s", tap.name, exc)
            return
        tap.sock = sock
        tap.ifindex = _ifindex(tap.name)

    @staticmethod
    def _close(tap: _Tap) -> None:
        if tap.sock is not None:
            tap.sock.close()
        tap.sock = None
        tap.ifindex = None

    def _check_interfaces(self) -> None:
        """Close sockets of vanished interfaces; re-attach when an interface of that name comes back."""
        for tap in self._taps:
            current = _ifindex(tap.name)
            if tap.sock is not None and current != tap.ifindex:
                log.warning("packetforward: interface %s went away; detached", tap.name)
                self._close(tap)
            if tap.sock is None and current is not None:
                self._open(tap, raise_errors=False)
                if tap.sock is not None:
                    log.info("packetforward: interface %s is back; attached", tap.name)

    # -- reading --------------------------------------------------------------------------------
    def read_totals(self) -> dict[str, tuple[int, int]]:
        """``{direction: (packets, bytes)}`` summed over CPUs, straight from the kernel map."""
        with self._lock:
            return self._read_locked()

    def _read_locked(self) -> dict[str, tuple[int, int]]:
        if self._table is None:
            return {}
        out: dict[str, tuple[int, int]] = {}
        for direction, key in (("ingress", INGRESS_KEY), ("egress", EGRESS_KEY)):
            per_cpu: Iterable[Any] = self._table.getvalue(self._table.Key(key))
            packets = 0
            nbytes = 0
            for value in per_cpu:
                packets += int(value.packets)
                nbytes += int(value.bytes)
            out[direction] = (packets, nbytes)
        return out

    def refresh(self) -> None:
        """Read the kernel totals into the metric store (cumulative counters)."""
        with self._lock:
            if not self._running:
                return
            self._check_interfaces()
            totals = self._read_locked()
            assert self._count is not None and self._bytes is not None
            self._count.set_many(((d,), float(p)) for d, (p, _) in totals.items())
            self._bytes.set_many(((d,), float(b)) for d, (_, b) in totals.items())

    def _on_collect(self) -> None:
        if self._running:
            self.refresh()
