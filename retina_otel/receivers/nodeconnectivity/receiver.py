"""The nodeconnectivity receiver: this agent probes the agents of the other nodes it knows.

Every ``interval`` it takes the nodes of the agent's watch cache (the ``k8s_cache`` extension: the
k8sattributes processor's cache, fed by the API server or the endpoints file), leaves itself out, and
probes up to ``max_nodes_per_interval`` of them over HTTP on their health port (:mod:`.probe`),
round-robin by name so that in a large cluster every node is reached every
``ceil(nodes / max_nodes_per_interval)`` rounds. It publishes Retina's two gauges:

* ``networkobservability_node_connectivity_status{source_node_name, target_node_name}``: 1 when the last
  probe got ``200``, 0 when it failed (refused, timed out, another status);
* ``networkobservability_node_connectivity_latency_seconds{source_node_name, target_node_name}``: the last
  successful probe's latency; the series is removed while the target is unreachable.

Series of nodes that left the cache are removed at the next round.
"""

from __future__ import annotations

import logging
import threading

from retina_otel.component import CreateSettings, Host
from retina_otel.extension_keys import K8S_CACHE
from retina_otel.flows import bytes_to_ip
from retina_otel.k8s.models import NodeInfo
from retina_otel.metrics.store import Family
from retina_otel.receivers.nodeconnectivity.config import NodeConnectivityConfig
from retina_otel.receivers.nodeconnectivity.probe import ProbeResult, probe_all

__all__ = ["LATENCY", "STATUS", "NodeConnectivityReceiver", "pick_round"]

log = logging.getLogger(__name__)

STATUS = "networkobservability_node_connectivity_status"
LATENCY = "networkobservability_node_connectivity_latency_seconds"
LABELS = ("source_node_name", "target_node_name")
FIRST_ROUND_DELAY = 2.0


def pick_round(names: list[str], after: str, limit: int) -> list[str]:
    """Up to ``limit`` of the sorted ``names``, starting after ``after`` and wrapping around."""
    if len(names) <= limit:
        return list(names)
    start = next((i for i, name in enumerate(names) if name > after), 0)
    return [names[(start + i) % len(names)] for i in range(limit)]


class NodeConnectivityReceiver:
    def __init__(self, settings: CreateSettings, config: NodeConnectivityConfig) -> None:
        self.id = settings.id
        self.config = config
        self._host: Host | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: Family | None = None
        self._latency: Family | None = None
        self._last = ""  # the last node probed: the next round starts after it
        self._reported: set[str] = set()
        self.rounds = 0

    def start(self, host: Host) -> None:
        if self._host is not None:
            return
        self._host = host
        if host.get_extension(K8S_CACHE) is None:
            log.warning("%s: no k8sattributes processor in this agent, so no nodes to probe", self.id)
        self._status = host.metrics.gauge(
            STATUS,
            "The last observed status of HTTP connectivity between this agent and the agents of other nodes "
            "(1 reachable, 0 not)",
            LABELS,
        )
        self._latency = host.metrics.gauge(
            LATENCY,
            "The last observed latency between this agent and the agents of other nodes in seconds",
            LABELS,
            unit="s",
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.id, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        """The first round soon after start (the cache has had a moment to fill), then every interval."""
        wait = min(self.config.interval, FIRST_ROUND_DELAY)
        while not self._stop.wait(wait):
            wait = self.config.interval
            try:
                self.probe_round()
            except Exception:
                log.exception("%s: probe round failed", self.id)

    def _targets(self) -> dict[str, NodeInfo]:
        assert self._host is not None
        shared = self._host.get_extension(K8S_CACHE)
        cache = shared.cache if shared is not None else None
        if cache is None:
            return {}
        me = self._host.node_name
        return {n.name: n for n in cache.nodes() if n.name != me and n.ips}

    def probe_round(self) -> list[ProbeResult]:
        """Probe the next nodes now and publish; returns the results."""
        host, status, latency = self._host, self._status, self._latency
        if host is None or status is None or latency is None:
            return []
        nodes = self._targets()
        gone = self._reported - set(nodes)
        if gone:
            status.remove_where("target_node_name", gone)
            latency.remove_where("target_node_name", gone)
            self._reported -= gone
        chosen = pick_round(sorted(nodes), self._last, self.config.max_nodes_per_interval)
        if not chosen:
            return []
        self._last = chosen[-1]
        targets = [(name, str(bytes_to_ip(nodes[name].ips[0]))) for name in chosen]
        results = probe_all(
            targets,
            port=self.config.port,
            path=self.config.path,
            timeout=self.config.timeout,
            concurrency=self.config.concurrency,
        )
        me = host.node_name
        failed: list[str] = []
        for result in results:
            status.set((me, result.target), 1.0 if result.ok else 0.0)
            if result.ok:
                latency.set((me, result.target), result.seconds)
            else:
                failed.append(result.target)
                log.debug("%s: %s unreachable: %s", self.id, result.target, result.error)
        if failed:
            latency.remove_where("target_node_name", failed)
        self._reported.update(r.target for r in results)
        self.rounds += 1
        return results

    def shutdown(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.config.timeout + 5)
