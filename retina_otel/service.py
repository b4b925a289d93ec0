"""The agent's service: builds the pipelines from a validated config, starts and stops them.

Wiring follows the Collector: each receiver is created once and hands its batches to a fan-out over
every pipeline of that signal that lists it; processors are created per pipeline (so two pipelines
never share processor state) and chained; exporters and connectors are created once and fed by every
pipeline that lists them. A connector is the end of its input pipelines and a receiver of its output
pipelines. Fan-outs copy a batch only for consumers that change data while others share it
(:class:`retina_otel.signals.FanOut`).

A processor that only fills flow-record fields (``Factory.fills``, e.g. tcplatency's RTT columns) is
left out of a pipeline in which nothing after it reads those fields (``Factory.reads``; a component
that does not declare what it reads reads everything): in the default config the flow records end in
flowmetrics, which reads no RTT, so joining RTTs onto every record would be work nobody sees. Adding
an exporter that does read them (otlp, a traces connector) to the pipeline brings it back; one that
reads records only on demand (``Factory.events_on_demand``: the observer) brings it back only while it
holds the event demand (the processor gets it in ``CreateSettings.event_demand``).
:attr:`Agent.bypassed`, :attr:`Agent.fills_on_demand` and ``/readyz`` list both and why.

A receiver whose flow records reach only components that sum each flow's records (``Factory.sums_flows``:
flowmetrics, k8sattributes, networks, tcplatency) is created with ``CreateSettings.only_sums``: how it
splits a flow's counts into records changes no output, so packetparser writes fewer of them (its
``report_rule: auto``). Any exporter of flow logs, hubblemetrics, a filter or a rate limit in one of its
logs pipelines turns that off (:attr:`Agent.only_sums`). A component that reads each record only at times
(``Factory.events_on_demand``: the observer, while a client follows live flows) gets the agent's
:class:`~retina_otel.eventdemand.EventDemand` to hold then; a receiver whose records reach only summing
components and such ones gets it too and writes event records only while it is held
(:attr:`Agent.events_on_demand`).

Every component gets its own :class:`~retina_otel.component.Host` view: its ``metrics`` tags what it
declares with its id and, for an exporter, reads only the metrics of the receivers and connectors of
its metrics pipelines; its status reports change only its own instance.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from retina_otel.component import (
    ComponentStatus,
    CreateSettings,
    Lifecycle,
    ProvidesExtensions,
)
from retina_otel.config import AgentConfig, ComponentEntry, ConfigError, ConfigProblem
from retina_otel.eventdemand import EventDemand
from retina_otel.extensions import DuplicateExtensionError, ExtensionKey, ExtensionRegistry
from retina_otel.metrics.selfmetrics import SelfMetrics
from retina_otel.metrics.store import AGENT_OWNER, MetricStore
from retina_otel.signals import FanOut, NopConsumer, connect, get_signal, signal_of

__all__ = ["Agent", "ComponentHost", "ComponentState", "FanOut", "metric_sources"]

log = logging.getLogger(__name__)

_SECTION = {"receiver": "receivers", "processor": "processors", "exporter": "exporters", "connector": "connectors"}


@dataclass
class ComponentState:
    id: str
    kind: str
    component: Lifecycle
    status: ComponentStatus = ComponentStatus.STARTING
    detail: str = ""
    pipelines: list[str] = field(default_factory=list)


def _owner(kind: str, comp_id: str) -> str:
    """How a component's metric families are tagged: its config path (``receivers.packetparser``)."""
    return f"{_SECTION[kind]}.{comp_id}"


def metric_sources(config: AgentConfig) -> dict[str, frozenset[str]]:
    """Per exporter id: the owners of the metric families it publishes. The receivers and connectors of
    the metrics pipelines it is in, the agent's own telemetry, and (the compatibility rule for the
    processor form of flowmetrics) every processor; nothing for an exporter in no metrics pipeline."""
    processors = {_owner("processor", p) for p in config.processors}
    sources: dict[str, set[str]] = {}
    for name, pipeline in config.service.pipelines.items():
        if signal_of(name) != "metrics":
            continue
        owners = {AGENT_OWNER, *processors}
        owners.update(
            _owner("connector" if r in config.connectors else "receiver", r) for r in pipeline.receivers
        )
        for exp_id in pipeline.exporters:
            if exp_id not in config.connectors:
                sources.setdefault(exp_id, set()).update(owners)
    return {exp_id: frozenset(owners) for exp_id, owners in sources.items()}


def _declared(
    entry: ComponentEntry, services: Mapping[ExtensionKey[Any] | str, object]
) -> dict[ExtensionKey[Any] | str, object]:
    """A component's extensions under the typed keys its factory declares (``provides``), so each service
    is checked against its key's type when registered, even when the component names it by string. An
    extension the factory does not declare is a bug in the component: the config check of duplicate
    providers could not see it."""
    declared = {key.name: key for key in entry.factory.provides}
    typed: dict[ExtensionKey[Any] | str, object] = {}
    for key, service in services.items():
        name = key if isinstance(key, str) else key.name
        if name not in declared:
            raise TypeError(
                f"{entry.kind} {entry.id} offers extension {name!r}, which its factory does not list in provides"
            )
        typed[declared[name]] = service
    return typed


def _reads(entry: ComponentEntry) -> frozenset[str] | None:
    """The flow-record fields a pipeline's component reads (None: any). A connector that passes flow
    records on to other pipelines reads whatever they do: any."""
    factory = entry.factory
    if factory.reads is None or (factory.kind == "connector" and ("logs", "logs") in factory.connects):
        return None
    return factory.reads(entry.config)


def _sums_flows(entry: ComponentEntry) -> bool:
    """Whether a pipeline's exporter or connector only sums flow records; a connector that passes them on
    to other pipelines does not (what it feeds may read each one)."""
    factory = entry.factory
    return factory.sums_flows and not (factory.kind == "connector" and ("logs", "logs") in factory.connects)


def _events_on_demand(entry: ComponentEntry) -> bool:
    """Whether a pipeline's exporter reads each flow record only while it holds the event demand."""
    wants = entry.factory.events_on_demand
    return wants is not None and wants(entry.config)


def _union(first: frozenset[str] | None, second: frozenset[str] | None) -> frozenset[str] | None:
    return None if first is None or second is None else first | second


class ComponentHost:
    """The :class:`~retina_otel.component.Host` one component instance sees."""

    def __init__(self, agent: Agent, key: str, metrics: MetricStore) -> None:
        self._agent = agent
        self.key = key
        self._metrics = metrics

    @property
    def metrics(self) -> MetricStore:
        return self._metrics

    @property
    def node_name(self) -> str:
        return self._agent.node_name

    @property
    def cluster_name(self) -> str:
        return self._agent.cluster_name

    def report_status(self, component_id: str, status: ComponentStatus, detail: str = "") -> None:
        """Applies to this instance only (a processor in two pipelines is two instances)."""
        del component_id
        self._agent.set_status(self.key, status, detail)

    def count_lost(self, event_type: str, reason: str, count: int = 1) -> None:
        self._agent.count_lost(event_type, reason, count)

    def get_extension(self, key: Any) -> Any:
        return self._agent.get_extension(key)


class Agent:
    """A running set of pipelines; also a :class:`~retina_otel.component.Host` (the agent's own view)."""

    def __init__(self, config: AgentConfig, *, store: MetricStore | None = None) -> None:
        self.config = config
        self._metrics = store or MetricStore()
        self.self_metrics = SelfMetrics(self._metrics)
        telemetry = config.service.telemetry
        self._node_name = telemetry.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
        self._cluster_name = config.service.cluster_name or os.environ.get("CLUSTER_NAME", "")
        self._lock = threading.Lock()
        self._states: dict[str, ComponentState] = {}
        self._hosts: dict[str, ComponentHost] = {}
        self._order: list[str] = []  # start order
        self._extensions = ExtensionRegistry()
        self._sources = metric_sources(config)
        self._heads: dict[str, tuple[object, bool]] = {}
        self._sums_flows: dict[str, bool] = {}  # pipeline -> everything in it only sums flow records
        self._on_demand_sums: dict[str, bool] = {}  # pipeline -> the same while nobody holds event_demand
        self._only_sums: list[str] = []  # receivers created with CreateSettings.only_sums (and no demand)
        self._on_demand: list[str] = []  # receivers created with CreateSettings.event_demand
        self.event_demand = EventDemand()
        self._bypassed: dict[str, str] = {}  # processor instance (id@pipeline) -> why it is left out
        self._on_demand_fills: dict[str, str] = {}  # processor instance -> why it fills only on demand
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
        """A report by id from outside a component (every instance with this id takes it); components
        report through their own :class:`ComponentHost`, which changes only their instance."""
        with self._lock:
            keys = [k for k, s in self._states.items() if k == component_id or s.id == component_id]
        for key in keys:
            self.set_status(key, status, detail)

    def set_status(self, key: str, status: ComponentStatus, detail: str = "") -> None:
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return
            state.status = status
            state.detail = detail
        self.self_metrics.component_status(key, status)

    def count_lost(self, event_type: str, reason: str, count: int = 1) -> None:
        self.self_metrics.lost(event_type, reason, count)

    def get_extension(self, key: ExtensionKey[Any] | str) -> Any:
        return self._extensions.get(key)

    def host_of(self, key: str) -> ComponentHost | None:
        """The host view of one instance (``id``, or ``id@pipeline`` for a processor)."""
        return self._hosts.get(key)

    # -- building -----------------------------------------------------------------------------------
    def _create(
        self,
        entry: ComponentEntry,
        key: str,
        pipeline: str,
        next_consumer: object,
        consumers: dict[str, object],
        *,
        only_sums: bool = False,
        event_demand: EventDemand | None = None,
    ) -> Lifecycle:
        state = self._states.get(key)
        if state is not None:
            if pipeline not in state.pipelines:
                state.pipelines.append(pipeline)
            return state.component
        owner = _owner(entry.kind, entry.id)
        settings = CreateSettings(
            entry.id,
            entry.kind,
            pipeline if entry.kind == "processor" else "",
            consumers,
            only_sums=only_sums,
            event_demand=event_demand,
        )
        component = entry.factory.create(settings, entry.config, next_consumer)
        if isinstance(component, ProvidesExtensions):
            try:
                self._extensions.register_all(_declared(entry, component.extensions()), owner)
            except DuplicateExtensionError as exc:
                raise ConfigError([ConfigProblem(owner, str(exc))]) from exc
        view = self._metrics.view(owner, self._sources.get(entry.id, frozenset()) if entry.kind == "exporter" else None)
        self._hosts[key] = ComponentHost(self, key, view)
        self._states[key] = ComponentState(entry.id, entry.kind, component, pipelines=[pipeline])
        self._order.append(key)
        return component

    def _pipeline_head(self, name: str) -> tuple[object, bool]:
        """The first consumer of a pipeline (its first processor, or its exporters' fan-out) and whether
        anything in the pipeline changes data; builds the pipeline (and connectors it ends in) once."""
        found = self._heads.get(name)
        if found is not None:
            return found
        cfg = self.config
        pipeline = cfg.service.pipelines[name]
        signal = get_signal(signal_of(name))
        assert signal is not None  # validated
        ends: list[tuple[object, bool]] = []
        read_after: frozenset[str] | None = frozenset()  # fields read after this point; None: any
        read_always: frozenset[str] | None = frozenset()  # the same without events_on_demand exporters
        sums = True  # everything in the pipeline only sums flow records (Factory.sums_flows)
        sums_between = True  # the same while no events_on_demand exporter holds the event demand
        for exp_id in pipeline.exporters:
            demand: EventDemand | None = None
            if exp_id in cfg.connectors:
                entry = cfg.connectors[exp_id]
                component: object = self._connector(exp_id, name)
            else:
                entry = cfg.exporters[exp_id]
                demand = self.event_demand if _events_on_demand(entry) else None
                component = self._create(entry, exp_id, name, None, {}, event_demand=demand)
            if signal.pushed:
                ends.append((component, entry.factory.mutates))
            read_after = _union(read_after, _reads(entry))
            if demand is None:
                read_always = _union(read_always, _reads(entry))
            sums = sums and _sums_flows(entry)
            sums_between = sums_between and (_sums_flows(entry) or _events_on_demand(entry))
        head: object = connect(signal, ends, self.count_lost) if signal.pushed else None
        mutates = False
        for proc_id in reversed(pipeline.processors):
            entry = cfg.processors[proc_id]
            key = f"{proc_id}@{name}"
            fills = entry.factory.fills
            if fills and read_after is not None and not read_after.intersection(fills):
                self._bypassed[key] = f"nothing after it in pipeline {name} reads {', '.join(fills)}"
                log.info("processor %s left out of pipeline %s: %s", proc_id, name, self._bypassed[key])
                continue
            demand = None
            if fills and read_always is not None and not read_always.intersection(fills):
                # Only exporters that read records on demand read its fields: it fills them while they do.
                demand = self.event_demand
                readers = f"only exporters reading on demand read {', '.join(fills)}"
                self._on_demand_fills[key] = f"in pipeline {name} {readers}"
                log.info("processor %s in pipeline %s fills only on demand", proc_id, name)
            consumers = {signal.name: head} if signal.pushed else {}
            head = self._create(entry, key, name, head, consumers, event_demand=demand)
            mutates = mutates or entry.factory.mutates
            read_after = _union(read_after, _reads(entry))
            read_always = _union(read_always, _reads(entry))
            sums = sums and entry.factory.sums_flows
            sums_between = sums_between and entry.factory.sums_flows
        self._heads[name] = (head, mutates)
        self._sums_flows[name] = sums
        self._on_demand_sums[name] = sums_between
        return self._heads[name]

    def _outputs(self, comp_id: str) -> tuple[list[str], dict[str, object]]:
        """The pipelines listing ``comp_id`` as a receiver, and per pushed signal the consumer of them."""
        names = [n for n, p in self.config.service.pipelines.items() if comp_id in p.receivers]
        by_signal: dict[str, list[tuple[object, bool]]] = {}
        for name in names:
            signal = signal_of(name)
            head = self._pipeline_head(name)
            if head[0] is not None:
                by_signal.setdefault(signal, []).append(head)
        consumers: dict[str, object] = {}
        for signal_name, heads in by_signal.items():
            spec = get_signal(signal_name)
            assert spec is not None
            consumers[signal_name] = connect(spec, heads, self.count_lost)
        return names, consumers

    def _connector(self, comp_id: str, from_pipeline: str) -> Lifecycle:
        entry = self.config.connectors[comp_id]
        state = self._states.get(comp_id)
        if state is not None:
            state.pipelines.append(from_pipeline)
            return state.component
        names, consumers = self._outputs(comp_id)
        outputs = [b for a, b in entry.factory.connects if a == signal_of(from_pipeline)]
        pushed = [s for s in dict.fromkeys(outputs) if s in consumers]
        next_consumer = consumers[pushed[0]] if pushed else None
        component = self._create(entry, comp_id, from_pipeline, next_consumer, consumers)
        self._states[comp_id].pipelines.extend(names)
        return component

    def _build(self) -> None:
        cfg = self.config
        for name in cfg.service.pipelines:
            self._pipeline_head(name)
        receivers: list[str] = []
        for pipeline in cfg.service.pipelines.values():
            receivers.extend(r for r in pipeline.receivers if r not in cfg.connectors and r not in receivers)
        for rec_id in receivers:
            names, consumers = self._outputs(rec_id)
            next_consumer = consumers.get("logs", NopConsumer())
            logs = [n for n in names if signal_of(n) == "logs"]
            only_sums = all(self._sums_flows[n] for n in logs)
            on_demand = not only_sums and all(self._on_demand_sums[n] for n in logs)
            if only_sums:
                self._only_sums.append(rec_id)
            if on_demand:
                self._on_demand.append(rec_id)
            self._create(
                cfg.receivers[rec_id],
                rec_id,
                names[0],
                next_consumer,
                consumers,
                only_sums=only_sums or on_demand,
                event_demand=self.event_demand if on_demand else None,
            )
            self._states[rec_id].pipelines = list(names)

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
                state.component.start(self._hosts[key])
            except Exception as exc:
                log.error("%s %s failed to start: %s", state.kind, state.id, exc)
                log.debug("start failure of %s", state.id, exc_info=True)
                self.set_status(key, ComponentStatus.FAILED, str(exc))
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
        if self._bypassed:
            detail["bypassed"] = dict(self._bypassed)
        if self._on_demand_fills:
            detail["fills_on_demand"] = dict(self._on_demand_fills)
        return ready, detail

    @property
    def bypassed(self) -> Mapping[str, str]:
        """Processor instances (``id@pipeline``) left out of their pipeline, with the reason."""
        return dict(self._bypassed)

    @property
    def fills_on_demand(self) -> Mapping[str, str]:
        """Processor instances (``id@pipeline``) that fill their fields only while the event demand is held
        (only ``events_on_demand`` exporters read them), with the reason."""
        return dict(self._on_demand_fills)

    @property
    def only_sums(self) -> frozenset[str]:
        """Receivers whose flow records reach only components that sum them (``CreateSettings.only_sums``)."""
        return frozenset(self._only_sums)

    @property
    def events_on_demand(self) -> frozenset[str]:
        """Receivers whose flow records reach components that sum them and ones that read each record only
        while they hold :attr:`event_demand` (``CreateSettings.event_demand``)."""
        return frozenset(self._on_demand)
