"""The agent's own metrics (``controlplane_networkobservability_*``): lost events, components that
failed to start, component status, the agent's own CPU and memory (its overhead, measured) and its
eBPF programs' run time and maps' fullness (:mod:`retina_otel.metrics.bpfstats`)."""

from __future__ import annotations

import os
import resource

from retina_otel.component import ComponentStatus
from retina_otel.metrics.store import MetricStore

__all__ = ["SelfMetrics"]

_STATUS_VALUE = {
    ComponentStatus.STARTING: 0.0,
    ComponentStatus.OK: 1.0,
    ComponentStatus.FAILED: -1.0,
    ComponentStatus.STOPPED: 0.0,
}


class SelfMetrics:
    def __init__(self, store: MetricStore) -> None:
        self._store = store
        self._lost = store.counter(
            "controlplane_networkobservability_lost_events_counter",
            "Events lost before they reached the pipeline (ring buffer overruns, full maps, queues)",
            ("type", "reason"),
        )
        self._failed = store.counter(
            "controlplane_networkobservability_plugin_manager_failed_to_reconcile",
            "Components (Retina plugins) that failed to start",
            ("reason",),
        )
        self._status = store.gauge(
            "controlplane_networkobservability_component_status",
            "1 running, 0 starting or stopped, -1 failed to start",
            ("component",),
        )
        self._cpu = store.counter(
            "controlplane_networkobservability_agent_cpu_seconds",
            "CPU time used by the agent process, user and system (kernel)",
            ("mode",),
            unit="s",
        )
        self._rss = store.gauge(
            "controlplane_networkobservability_agent_max_resident_memory_bytes",
            "Peak resident memory of the agent process",
            unit="By",
        )
        self._installed = False

    def lost(self, event_type: str, reason: str, count: int = 1) -> None:
        if count:
            self._lost.add((event_type, reason), count)

    def failed_to_start(self, component_id: str, reason: str) -> None:
        self._failed.add((f"{component_id}: {reason}",), 1)

    def component_status(self, component_id: str, status: ComponentStatus) -> None:
        self._status.set((component_id,), _STATUS_VALUE[status])

    def _refresh_process(self) -> None:
        times = os.times()
        self._cpu.set_many(((("user",), times.user), (("system",), times.system)))
        self._rss.set((), float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))

    def install_process_metrics(self) -> None:
        """The process's CPU and memory, and its eBPF programs' cost and maps' fullness
        (:mod:`retina_otel.metrics.bpfstats`), refreshed at every collection."""
        if not self._installed:
            self._installed = True
            self._store.add_collect_hook(self._refresh_process)
            from retina_otel.metrics.bpfstats import BpfSelfMetrics

            self._store.add_collect_hook(BpfSelfMetrics(self._store).refresh)
