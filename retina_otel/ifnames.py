"""Interface names for flow records: ``ifindex`` -> name in bulk, cached, invalidated on link changes.

Flow records carry the interface index the kernel reported (``FLOW_DTYPE["ifindex"]``); exporters add
``network.interface.name`` beside it. :meth:`InterfaceNames.names` resolves a whole column at once (one
``searchsorted`` into a sorted table of this namespace's links; no Python per record). The table is
rebuilt from ``if_nameindex(3)`` when

* a netlink ``RTMGRP_LINK`` message arrived since the last build (a link appeared, changed, was renamed
  or vanished): checked with one non-blocking ``recv`` per call, no thread; or
* an index the table does not know is asked for, at most once per ``min_refresh_interval`` (records of
  a veth deleted since still arrive for a while; they keep an empty name).

Names are those of the agent's network namespace (the host's, where the receivers hook).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time

import numpy as np
import numpy.typing as npt

__all__ = ["INTERFACES", "InterfaceNames"]

log = logging.getLogger(__name__)

_RTMGRP_LINK = 0x1


class InterfaceNames:
    def __init__(self, min_refresh_interval: float = 1.0) -> None:
        self._min_refresh = min_refresh_interval
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._opened = False
        self._stale = True
        self._built = -float("inf")
        self._index = np.zeros(0, np.uint32)
        self._names: npt.NDArray[np.object_] = np.array([""], dtype=object)  # last slot: "not found"
        self.builds = 0

    def _open(self) -> None:
        """Subscribe to link changes before the first dump, so no change between the two is missed."""
        self._opened = True
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
            sock.bind((0, _RTMGRP_LINK))
            self._sock = sock
        except OSError as exc:  # no netlink: rebuild on unknown indices only
            log.debug("interface names: no netlink link notifications (%s)", exc)

    def _drain_changes(self) -> bool:
        sock = self._sock
        if sock is None:
            return False
        changed = False
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                try:
                    sock.recv(65536)
                except OSError as exc:  # ENOBUFS: more link messages came than the socket holds
                    if exc.errno != errno.ENOBUFS:
                        raise
                changed = True
        return changed

    def _rebuild(self) -> None:
        try:
            pairs = sorted(socket.if_nameindex())
        except OSError as exc:
            log.warning("interface names: listing links failed: %s", exc)
            pairs = []
        self._index = np.fromiter((i for i, _ in pairs), dtype=np.uint32, count=len(pairs))
        names = np.empty(len(pairs) + 1, dtype=object)
        names[: len(pairs)] = [n for _, n in pairs]
        names[len(pairs)] = ""
        self._names = names
        self._built = time.monotonic()
        self._stale = False
        self.builds += 1

    def _positions(self, ifindex: npt.NDArray[np.uint32]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        index = self._index
        if not len(index):
            return np.full(ifindex.shape, 0, np.intp), np.zeros(ifindex.shape, bool)
        pos = np.minimum(np.searchsorted(index, ifindex), len(index) - 1)
        return pos, index[pos] == ifindex

    def names(self, ifindex: npt.ArrayLike) -> npt.NDArray[np.object_]:
        """The name of each index (``""`` for 0 and for indices no link of this namespace has)."""
        query = np.asarray(ifindex, dtype=np.uint32)
        with self._lock:
            if not self._opened:
                self._open()
            if self._drain_changes():
                self._stale = True
            if self._stale:
                self._rebuild()
            pos, hit = self._positions(query)
            unknown = ~hit & (query != 0)
            if unknown.any() and time.monotonic() - self._built >= self._min_refresh:
                self._rebuild()
                pos, hit = self._positions(query)
            names = self._names
        out: npt.NDArray[np.object_] = names[np.where(hit, pos, len(names) - 1)]
        return out

    def name(self, ifindex: int) -> str:
        return str(self.names(np.array([ifindex], np.uint32))[0]) if ifindex else ""

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._opened = False
            self._stale = True


INTERFACES = InterfaceNames()
"""The agent's one cache (exporters of every pipeline share it)."""
