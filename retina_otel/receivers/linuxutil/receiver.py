"""The linuxutil receiver: reads procfs and ethtool on an interval (and on scrape) into gauges.

What goes where follows Retina's ``pkg/plugin/linuxutil``:

* ``tcp_state{state}``: TCP sockets per state, from /proc/net/tcp and tcp6 (Retina reads only tcp).
* ``tcp_connection_remote{address}``: TCP sockets per remote address (unspecified and loopback remotes
  left out), the top ``max_remote_addresses``.
* ``tcp_connection_stats{statistic_name}``: curated TcpExt and MPTcpExt keys of /proc/net/netstat.
* ``ip_connection_stats{statistic_name}``: curated IpExt keys of /proc/net/netstat.
* ``udp_connection_stats{statistic_name}``: ``ACTIVE`` = UDP sockets (udp + udp6), plus curated keys of
  the ``Udp:`` line of /proc/net/snmp (beyond Retina).
* ``interface_stats{interface_name, statistic_name}``: ethtool statistics whose name contains ``err`` or
  ``drop``.

Everything is read in the reading thread's network namespace (see :mod:`.procfs`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from retina_otel.component import ComponentStatus, CreateSettings, Host
from retina_otel.metrics.store import Family
from retina_otel.receivers._periodic import Worker
from retina_otel.receivers.linuxutil.config import LinuxUtilConfig
from retina_otel.receivers.linuxutil.ethtool import EthtoolError, EthtoolUnsupported, IoctlEthtool, interface_stats
from retina_otel.receivers.linuxutil.procfs import (
    PROC_NET,
    TCP_STATES,
    read_connection_stats,
    read_socket_summary,
)

__all__ = ["LinuxUtilReceiver", "top_remote_addresses"]

log = logging.getLogger(__name__)

TCP_STATE = "networkobservability_tcp_state"
TCP_REMOTE = "networkobservability_tcp_connection_remote"
TCP_STATS = "networkobservability_tcp_connection_stats"
IP_STATS = "networkobservability_ip_connection_stats"
UDP_STATS = "networkobservability_udp_connection_stats"
IFACE_STATS = "networkobservability_interface_stats"
UDP_ACTIVE = "ACTIVE"
COLLECT_MIN_AGE = 1.0  # seconds: a scrape re-reads only when the last read is older than this
_MAX_UNSUPPORTED = 2000  # bound on the cache of interfaces without ethtool statistics


def top_remote_addresses(by_remote: Mapping[str, int], limit: int) -> dict[str, int]:
    """The ``limit`` addresses with the most sockets; ties broken by address so the choice is stable."""
    ranked = sorted(by_remote.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(ranked[:limit])


def _error_or_drop(name: str) -> bool:
    return "err" in name or "drop" in name


class LinuxUtilReceiver:
    """Reads node statistics from procfs and ethtool; no BPF, nothing attached."""

    def __init__(self, settings: CreateSettings, config: LinuxUtilConfig, *, proc_net: Path = PROC_NET) -> None:
        self.settings = settings
        self.config = config
        self.proc_net = proc_net
        self._lock = threading.Lock()
        self._poller = Worker(f"{settings.id}-poll")
        self._running = False
        self._last_refresh = 0.0
        self._families: dict[str, Family] = {}
        self._remotes: set[str] = set()
        self._stat_keys: dict[str, set[str]] = {TCP_STATS: set(), IP_STATS: set(), UDP_STATS: set()}
        self._interfaces: set[str] = set()
        self._unsupported: dict[str, int] = {}  # name -> ifindex when found to have no statistics

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        m = host.metrics
        self._families = {
            TCP_STATE: m.gauge(TCP_STATE, "Number of TCP sockets by state", ("state",)),
            TCP_REMOTE: m.gauge(TCP_REMOTE, "Number of TCP sockets by remote address", ("address",)),
            TCP_STATS: m.gauge(TCP_STATS, "TCP statistics from /proc/net/netstat", ("statistic_name",)),
            IP_STATS: m.gauge(IP_STATS, "IP statistics from /proc/net/netstat", ("statistic_name",)),
            UDP_STATS: m.gauge(UDP_STATS, "UDP socket count and statistics", ("statistic_name",)),
            IFACE_STATS: m.gauge(
                IFACE_STATS,
                "Interface error and drop statistics from ethtool",
                ("interface_name", "statistic_name"),
            ),
        }
        with self._lock:
            self._running = True
        self.refresh()
        host.metrics.add_collect_hook(self._on_collect)
        self._poller.run_every(
            self.config.interval, self.refresh, log=log, failure="linuxutil: reading statistics failed"
        )
        host.report_status(self.settings.id, ComponentStatus.OK)

    def shutdown(self) -> None:
        self._poller.signal()
        with self._lock:
            self._running = False
        self._poller.stop(timeout=5)

    def _on_collect(self) -> None:
        if self._running and time.monotonic() - self._last_refresh >= COLLECT_MIN_AGE:
            self.refresh()

    # -- reading --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read everything now, in the calling thread's network namespace, and publish it."""
        with self._lock:
            if not self._running:
                return
            self._last_refresh = time.monotonic()
            self._refresh_sockets()
            self._refresh_connection_stats()
            self._refresh_interfaces()

    def _refresh_sockets(self) -> None:
        summary = read_socket_summary(self.proc_net)
        states = {name: summary.tcp_by_state.get(name, 0) for name in TCP_STATES.values()}
        states.update(summary.tcp_by_state)  # unknown states too, should a kernel add one
        self._families[TCP_STATE].set_many(((s,), float(n)) for s, n in states.items())
        remotes = top_remote_addresses(summary.tcp_by_remote, self.config.max_remote_addresses)
        family = self._families[TCP_REMOTE]
        gone = self._remotes - remotes.keys()
        if gone:
            family.remove_where("address", gone)
        family.set_many(((a,), float(n)) for a, n in remotes.items())
        self._remotes = set(remotes)
        udp = self._families[UDP_STATS]
        udp.set((UDP_ACTIVE,), float(summary.udp_sockets))

    def _refresh_connection_stats(self) -> None:
        stats = read_connection_stats(self.proc_net, include_zero=self.config.include_zero_values)
        for name, values in ((TCP_STATS, stats.tcp), (IP_STATS, stats.ip), (UDP_STATS, stats.udp)):
            family = self._families[name]
            gone = self._stat_keys[name] - values.keys()
            if gone:
                family.remove_where("statistic_name", gone)
            family.set_many(((k,), float(v)) for k, v in values.items())
            self._stat_keys[name] = set(values)

    def _refresh_interfaces(self) -> None:
        wanted = self.config.include_interfaces
        present = {name: index for index, name in socket.if_nameindex()}
        for name in [n for n, i in self._unsupported.items() if present.get(n) != i]:
            del self._unsupported[name]  # gone or re-created: look again when it shows up
        family = self._families[IFACE_STATS]
        seen: set[str] = set()
        reader = IoctlEthtool()
        try:
            for name, index in present.items():
                if name == "lo" or name in self._unsupported or (wanted is not None and name not in wanted):
                    continue
                try:
                    raw = interface_stats(name, reader)
                except EthtoolUnsupported:
                    if len(self._unsupported) < _MAX_UNSUPPORTED:
                        self._unsupported[name] = index
                    continue
                except EthtoolError as exc:  # vanished between listing and reading
                    log.debug("linuxutil: ethtool %s: %s", name, exc)
                    continue
                values = {
                    k: v for k, v in raw.items() if _error_or_drop(k) and (v != 0 or self.config.include_zero_values)
                }
                seen.add(name)
                family.set_many(((name, k), float(v)) for k, v in values.items())
        finally:
            reader.close()
        gone = self._interfaces - seen
        if gone:
            family.remove_where("interface_name", gone)
        self._interfaces = seen
