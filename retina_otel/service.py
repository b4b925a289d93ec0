"""The agent's service: builds the pipelines from a validated config, starts and stops them.

Wiring follows the Collector: each receiver is created once and hands its flow batches to a fan-out
over every logs pipeline that lists it; processors are created per pipeline (so two pipelines never
share processor state) and chained; exporters are created once and fed by every pipeline that lists
them. Metrics go through the agent's one :class:`MetricStore`.

Start order is exporters, processors, receivers (consumers before producers); shutdown is the
reverse. A component whose ``start`` raises is recorded as failed (log line, metric, readiness detail)
and the rest keep running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from retina_otel.component import (
    ComponentStatus,
    CreateSettings,
    FlowConsumer,
    Lifecycle,
    NopFlowConsumer,
    ProvidesExtensions,
)
from retina_otel.config import AgentConfig, ComponentEntry
from retina_otel.flows import FlowBatch
from retina_otel.metrics.selfmetrics import SelfMetrics
from retina_otel.metrics.store import MetricStore

__all__ = ["Agent", "ComponentState", "FanOut"]

log = logging.getLogger(__name__)


class FanOut:
    """Hands each batch to several consumers; one consumer's failure does not starve the others."""

    def __init__(self, consumers: Sequence[FlowConsumer], on_error: SelfMetrics | None = None) -> None:
        self._consumers = list(consumers)
        self._self_metrics = on_error

    def consume_flows(self, batch: FlowBatch) -> None:
        for consumer in self._consumers:
            try:
                consumer.consume_flows(batch)
            except Exception:
                log.exception("flow consumer %r failed; batch of %d records dropped for it", consumer, len(batch))
                if self._self_metrics is not None:
                    self._self_metrics.lost("pipeline", "consumer_error", len(batch))


@dataclass
class ComponentState:
    id: str
    kind: str
    component: Lifecycle
    status: ComponentStatus = ComponentStatus.STARTING
    detail: str = ""
    pipelines: list[str] = field(default_factory=list)


class Agent:
    """A running set of pipelines; also the :class:`~retina_otel.component.Host` of its components."""

    def __init__(self, config: AgentConfig, *, store: MetricStore | None = None) -> None:
        self.config = config
        self._metrics = store or MetricStore()
        self.self_metrics = SelfMetrics(self._metrics)
        telemetry = config.service.telemetry
        self._node_name = telemetry.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
        self._cluster_name = config.service.cluster_name or os.environ.get("CLUSTER_NAME", "")
        self._lock = threading.Lock()
        self._states: dict[str, ComponentState] = {}
        self._order: list[str] = []  # start order
        self._extensions: dict[str, object] = {}
        self._started = False
        self._stopped = False
        self._expiry_stop = threading.Event()
        self._expiry_thread: threading.Thread | None = None
        self._build()

    # -- Host ---------------------------------------------------------------------------------------
    @property
    def metrics(self) -> MetricStore:
        return self._metrics

    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def cluster_name(self) -> str:
        return self._cluster_name

    def report_status(self, component_id: str, status: ComponentStatus, detail: str = "") -> None:
        """A component's own report; processors are keyed per pipeline, so every instance with this id
        takes it (each pipeline's instance reports for itself with the same id)."""
        with self._lock:
            state = self._states.get(component_id)
            matches = [state] if state is not None else [s for s in self._states.values() if s.id == component_id]
            for match in matches:
                match.status = status
                match.detail = detail
        if matches:
            self.self_metrics.component_status(component_id, status)

    def count_lost(self, event_type: str, reason: str, count: int = 1) -> None:
        self.self_metrics.lost(event_type, reason, count)

    def get_extension(self, name: str) -> object | None:
        return self._extensions.get(name)

    def register_extension(self, name: str, service: object) -> None:
        """Offer a shared service to other components (the packetparser's IP filter, the k8s cache)."""
        self._extensions[name] = service

    # -- building -----------------------------------------------------------------------------------
    def _create(self, entry: ComponentEntry, key: str, next_consumer: FlowConsumer | None, pipeline: str) -> Lifecycle:
        state = self._states.get(key)
        if state is not None:
            state.pipelines.append(pipeline)
            return state.component
        component = entry.factory.create(CreateSettings(entry.id, entry.kind), entry.config, next_consumer)
        if isinstance(component, ProvidesExtensions):
            for name, service in component.extensions().items():
                self.register_extension(name, service)
        self._states[key] = ComponentState(entry.id, entry.kind, component, pipelines=[pipeline])
        self._order.append(key)
        return component

    def _build(self) -> None:
        cfg = self.config
        pipelines = cfg.service.pipelines
        # Exporters first (created once), then per-pipeline processor chains, then receivers.
        pipeline_heads: dict[str, FlowConsumer] = {}
        for name, pipeline in pipelines.items():
            signal = name.split("/", 1)[0]
            exporters: list[FlowConsumer] = []
            for exp_id in pipeline.exporters:
                exporter = self._create(cfg.exporters[exp_id], exp_id, None, name)
                if signal == "logs" and isinstance(exporter, FlowConsumer):
                    exporters.append(exporter)
            head: FlowConsumer = FanOut(exporters, self.self_metrics) if exporters else NopFlowConsumer()
            for proc_id in reversed(pipeline.processors):
                key = f"{proc_id}@{name}"
                processor = self._create(cfg.processors[proc_id], key, head, name)
                if isinstance(processor, FlowConsumer):
                    head = processor
            pipeline_heads[name] = head
        receivers: dict[str, list[str]] = {}
        for name, pipeline in pipelines.items():
            for rec_id in pipeline.receivers:
                receivers.setdefault(rec_id, []).append(name)
        for rec_id, names in receivers.items():
            logs_heads = [pipeline_heads[n] for n in names if n.split("/", 1)[0] == "logs"]
            next_consumer: FlowConsumer
            if not logs_heads:
                next_consumer = NopFlowConsumer()
            elif len(logs_heads) == 1:
                next_consumer = logs_heads[0]
            else:
                next_consumer = FanOut(logs_heads, self.self_metrics)
            component = self._create(cfg.receivers[rec_id], rec_id, next_consumer, names[0])
            self._states[rec_id].pipelines = list(names)
            del component

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.self_metrics.install_process_metrics()
        for key in self._order:  # exporters, processors, receivers: consumers before producers
            state = self._states[key]
            started = time.monotonic()
            try:
                state.component.start(self)
            except Exception as exc:
                log.error("%s %s failed to start: %s", state.kind, state.id, exc)
                log.debug("start failure of %s", state.id, exc_info=True)
                self.report_status(key, ComponentStatus.FAILED, str(exc))
                self.self_metrics.failed_to_start(state.id, type(exc).__name__)
                continue
            with self._lock:
                # A component may have reported STARTING (e.g. waiting for a first sync); keep that.
                if state.status is ComponentStatus.STARTING and not state.detail:
                    state.status = ComponentStatus.OK
            self.self_metrics.component_status(key, state.status)
            log.info("%s %s started in %.1fs", state.kind, state.id, time.monotonic() - started)
        interval = self.config.service.telemetry.expiry_interval
        self._expiry_thread = threading.Thread(
            target=self._expire_loop, args=(interval,), name="metric-expiry", daemon=True
        )
        self._expiry_thread.start()

    def _expire_loop(self, interval: float) -> None:
        while not self._expiry_stop.wait(interval):
            try:
                self._metrics.expire()
            except Exception:
                log.exception("metric expiry failed")

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._expiry_stop.set()
        for key in reversed(self._order):  # receivers first, exporters last (they flush)
            state = self._states[key]
            try:
                state.component.shutdown()
            except Exception:
                log.exception("%s %s failed to shut down cleanly", state.kind, state.id)
            with self._lock:
                state.status = ComponentStatus.STOPPED
        if self._expiry_thread is not None:
            self._expiry_thread.join(timeout=5)

    # -- health -------------------------------------------------------------------------------------
    def states(self) -> list[ComponentState]:
        with self._lock:
            return [
                ComponentState(s.id, s.kind, s.component, s.status, s.detail, list(s.pipelines))
                for s in (self._states[k] for k in self._order)
            ]

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when no component is still starting (and, if required, none failed)."""
        states = self.states()
        require_all = self.config.service.telemetry.health.require_all_components
        starting = [s.id for s in states if s.status is ComponentStatus.STARTING]
        failed = [s.id for s in states if s.status is ComponentStatus.FAILED]
        ready = self._started and not self._stopped and not starting and not (require_all and failed)
        detail: dict[str, object] = {
            "ready": ready,
            "components": {
                (s.id if s.kind != "processor" else f"{s.id} ({','.join(s.pipelines)})"): {
                    "kind": s.kind,
                    "status": s.status.value,
                    **({"detail": s.detail} if s.detail else {}),
                }
                for s in states
            },
        }
        if failed:
            detail["failed"] = failed
        return ready, detail
