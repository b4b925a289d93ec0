"""Which interfaces to observe, and a netlink watcher that notices new and vanished ones at once."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["LinkWatcher", "default_route_ifindexes", "list_links", "select_pod_links"]

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


class LinkWatcher:
    """Calls ``on_change()`` soon after any link appears, changes or vanishes, and every
    ``rescan_interval`` seconds as a safety net. The netlink socket is opened in :meth:`start`, in the
    calling thread's network namespace."""

    def __init__(self, on_change: Callable[[], None], rescan_interval: float) -> None:
        self._on_change = on_change
        self._rescan_interval = rescan_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.bind((0, _RTMGRP_LINK))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="packetparser-links", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        sock = self._sock
        waited = 0.0
        while not self._stop.is_set():
            changed = False
            try:
                sock.recv(65536)
                changed = True
                sock.setblocking(False)  # collect the burst (a new veth brings several messages)
                with contextlib.suppress(BlockingIOError, OSError):
                    while True:
                        sock.recv(65536)
                sock.settimeout(0.2)
            except TimeoutError:
                waited += 0.2
            except OSError:
                if self._stop.is_set():
                    return
                waited += 0.2
            if changed or waited >= self._rescan_interval:
                waited = 0.0
                try:
                    self._on_change()
                except Exception:
                    log.exception("packetparser: interface rescan failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
