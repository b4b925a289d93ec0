"""Which interfaces to observe, and a netlink watcher that notices new and vanished ones at once.

Shared by the components that hook pod veths and the host interface with TC programs (packetparser, and
the dns receiver when it attaches its own programs)."""

from __future__ import annotations

import errno
import fnmatch
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from retina_otel.wakeup import Wakeup

__all__ = [
    "DEFAULT_POD_INTERFACE_PATTERNS",
    "LinkWatcher",
    "default_route_ifindexes",
    "list_links",
    "select_links",
    "select_pod_links",
]

DEFAULT_POD_INTERFACE_PATTERNS = ("veth*", "azv*", "cali*", "lxc*", "ro*")
"""Host-side pod interfaces: veth* (most CNIs), azv* (Azure CNI), cali* (Calico), lxc* (Cilium), ro* (the
retina-otel sandbox)."""

log = logging.getLogger(__name__)

_RTMGRP_LINK = 0x1


def list_links(ipr: Any) -> dict[int, str]:
    """ifindex -> name of every link in the namespace ``ipr`` talks to."""
    out: dict[int, str] = {}
    for msg in ipr.get_links():
        name = msg.get_attr("IFLA_IFNAME")
        if name:
            out[int(msg["index"])] = str(name)
    return out


def select_pod_links(links: dict[int, str], patterns: Sequence[str], exclude: set[int]) -> dict[int, str]:
    return {
        idx: name
        for idx, name in links.items()
        if idx not in exclude and name != "lo" and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }


def default_route_ifindexes(ipr: Any) -> list[int]:
    """Output interfaces of the main table's default route (IPv4 first, else IPv6)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        found: list[int] = []
        try:
            routes = ipr.route("dump", family=family)
        except Exception:
            continue
        for r in routes:
            if int(r["dst_len"]) != 0 or (r.get_attr("RTA_TABLE") or r["table"]) != 254:
                continue
            oif = r.get_attr("RTA_OIF")
            if oif:
                found.append(int(oif))
            for hop in r.get_attr("RTA_MULTIPATH") or []:
                found.append(int(hop["oif"]))
        if found:
            return sorted(set(found))
    return []


def select_links(ipr: Any, patterns: Sequence[str], host_interface: str) -> tuple[dict[int, str], dict[int, str]]:
    """(host interfaces, pod interfaces) as ifindex -> name. ``host_interface``: ``auto`` (the default
    route's interfaces), a name, or ``none``; pod interfaces match one of ``patterns`` and are not host ones."""
    links = list_links(ipr)
    host: set[int] = set()
    if host_interface == "auto":
        host = set(default_route_ifindexes(ipr))
    elif host_interface != "none":
        host = {i for i, n in links.items() if n == host_interface}
    return {i: links[i] for i in host if i in links}, select_pod_links(links, patterns, host)


class LinkWatcher:
    """Calls ``on_change()`` soon after any link appears, changes or vanishes, and every
    ``rescan_interval`` seconds as a safety net. The netlink socket is opened in :meth:`start`, in the
    calling thread's network namespace.

    When link messages come faster than the socket's buffer holds, the kernel drops some and reports
    ENOBUFS: changes were missed, so ``on_change()`` runs at once, and :attr:`overruns` counts it.
    """

    def __init__(self, on_change: Callable[[], None], rescan_interval: float, name: str = "links") -> None:
        self._on_change = on_change
        self._name = name
        self._rescan_interval = rescan_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._wake: Wakeup | None = None  # stop() wakes the thread's select
        self.overruns = 0  # times the kernel dropped link messages (ENOBUFS)

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.bind((0, _RTMGRP_LINK))
        sock.setblocking(False)
        self._sock = sock
        self._wake = Wakeup()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Sleep in select until a link message, the next safety-net rescan or stop(): no polling, so an
        idle node costs this thread nothing."""
        assert self._sock is not None and self._wake is not None
        sock = self._sock
        fds = [sock.fileno(), self._wake.fileno()]
        next_rescan = time.monotonic() + self._rescan_interval
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(fds, [], [], max(0.0, next_rescan - time.monotonic()))
            except OSError:
                return
            if self._stop.is_set():
                return
            changed = False
            if fds[0] in ready:  # collect the burst (a new veth brings several messages)
                changed = self._read_burst(sock)
            if changed or time.monotonic() >= next_rescan:
                next_rescan = time.monotonic() + self._rescan_interval
                try:
                    self._on_change()
                except Exception:
                    log.exception("%s: interface rescan failed", self._name)

    def _read_burst(self, sock: socket.socket) -> bool:
        """Read every queued message; True when any came or some were lost (ENOBUFS)."""
        changed = False
        while True:
            try:
                sock.recv(65536)
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("%s: netlink receive failed: %s", self._name, exc)
                    return changed
                self.overruns += 1
                log.warning("%s: link messages were lost (netlink ENOBUFS); rescanning interfaces now", self._name)
                changed = True  # and read on: the messages still queued follow
            else:
                changed = True

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            self._wake.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._wake is not None:
            self._wake.close()
            self._wake = None
