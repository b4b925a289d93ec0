"""The ``spans`` component: flow records in (logs), spans out (traces), as TracesConfiguration says.

What is traced comes from the standalone ``traces`` entries of its config and, when
``traces_configuration.enabled``, from every Accepted TracesConfiguration object (watched like
MetricsConfiguration). With neither, ``consume_flows`` returns at once: no table, no work. Pod and
namespace selectors are resolved against the agent's Kubernetes cache (the ``k8s_cache`` extension) and
re-resolved when its pods or namespaces change.

A worker thread hands finished spans to the next consumer every ``flush_interval``; flow batches are
folded into the table on the caller's thread under a lock (vectorised, see
:mod:`retina_otel.traces.builder`). Losses go to ``lost_events_counter{type="traces"}``:
``connection_table_full``, ``event_buffer_full``, ``hash_collision``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from retina_otel.component import ComponentConfig, ComponentStatus, CreateSettings, Host
from retina_otel.crds.models import TraceConfiguration, format_validation_error
from retina_otel.extension_keys import K8S_CACHE, K8sMetadata
from retina_otel.flows import FlowBatch
from retina_otel.k8s.store import K8sCache
from retina_otel.processors.flowmetrics.config import MetricsConfigurationSource
from retina_otel.traces.builder import BuilderSettings, SpanBuilder
from retina_otel.traces.spans import SpanConsumer
from retina_otel.traces.targets import PodView, TraceTargets, compile_targets

__all__ = ["SpanConnector", "SpansConfig", "TracesConfigurationSource"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000


class TracesConfigurationSource(MetricsConfigurationSource):
    """Where the TracesConfiguration custom resources are watched (retina.sh/v1alpha1, cluster scoped)."""

    enabled: bool = Field(
        False, description="watch TracesConfiguration objects and trace what every Accepted one targets; default false"
    )


class SpansConfig(ComponentConfig):
    """Settings of the ``spans`` connector (flow records -> connection spans)."""

    traces: list[TraceConfiguration] = Field(
        default_factory=list,
        description="standalone trace configuration, entries of a TracesConfiguration's spec.traceConfiguration "
        "(captureLevel, includeLayer7Data, traceTargets; docs/traces.md); applied with watched objects; default none",
    )
    traces_configuration: TracesConfigurationSource = Field(
        TracesConfigurationSource(), description="watching TracesConfiguration objects"
    )
    max_connections: int = Field(
        65_536,
        ge=16,
        description="connections held open for spans, at most; more are counted lost "
        "(traces/connection_table_full); default 65536",
    )
    idle_timeout_tcp: float = Field(
        360.0, gt=0, description="seconds without a packet before a TCP connection without FIN/RST ends; default 360"
    )
    idle_timeout: float = Field(
        60.0,
        gt=0,
        description="seconds without a packet before a UDP/ICMP connection ends (keep it above "
        "packetparser's report_interval); default 60",
    )
    close_delay: float = Field(
        12.0,
        ge=0,
        description="seconds a closed TCP connection's span waits for drop and retransmission events "
        "(keep it above the dropreason/tcpretrans interval); default 12",
    )
    trace_id_window: float = Field(
        10.0,
        gt=0,
        description="seconds of the time bucket in the trace id rule (docs/traces.md): both nodes must "
        "see the first packet in the same bucket; default 10",
    )
    max_events_per_span: int = Field(128, ge=0, description="span events kept per span; default 128")
    event_buffer: int = Field(
        65_536, ge=0, description="events waiting for their span, at most (traces/event_buffer_full); default 65536"
    )
    flush_interval: float = Field(1.0, gt=0, description="seconds between hand-offs of finished spans; default 1")

    def builder_settings(self) -> BuilderSettings:
        return BuilderSettings(
            max_connections=self.max_connections,
            idle_timeout_tcp_ns=int(self.idle_timeout_tcp * _NS),
            idle_timeout_other_ns=int(self.idle_timeout * _NS),
            close_delay_ns=int(self.close_delay * _NS),
            tombstone_ns=max(60 * _NS, int(self.idle_timeout * _NS)),
            trace_id_window_ns=int(self.trace_id_window * _NS),
            max_events_per_span=self.max_events_per_span,
            event_buffer=self.event_buffer,
        )


class SpanConnector:
    """Consumes flow batches (``consume_flows``) and hands span batches to ``next_consumer.consume_spans``."""

    def __init__(self, settings: CreateSettings, config: SpansConfig, next_consumer: SpanConsumer) -> None:
        self.id = settings.id
        self.config = config
        self._next = next_consumer
        self._host: Host | None = None
        self._lock = threading.Lock()
        self._builder: SpanBuilder | None = None  # None: nothing traced (zero cost)
        self._watched: list[TraceConfiguration] = []
        self._cache: K8sCache | None = None
        self._extension: K8sMetadata | None = None
        self._dirty = threading.Event()
        self._compiling = threading.Lock()  # one recompilation at a time (watcher and worker threads)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: Any = None
        self.spans_out = 0

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        if self._thread is not None:
            return
        self._host = host
        self._extension = host.get_extension(K8S_CACHE)
        self._stop.clear()
        self._recompile()
        self._thread = threading.Thread(target=self._loop, name=f"{self.id}-spans", daemon=True)
        self._thread.start()
        source = self.config.traces_configuration
        if source.enabled:
            from retina_otel.traces.watch import traces_configuration_watcher

            self._watcher = traces_configuration_watcher(
                self._on_traces_configuration,
                api_url=source.api_url,
                kubeconfig=source.kubeconfig,
                context=source.context,
                relist_seconds=source.relist_seconds,
                watch_timeout_seconds=source.watch_timeout_seconds,
            )
            self._watcher.start()

    def shutdown(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.shutdown()
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=10)
        if self._cache is not None:
            self._cache.remove_listener(self._on_cache_change)
            self._cache = None
        self._emit(everything=True)
        with self._lock:
            self._builder = None

    # -- input ----------------------------------------------------------------------------------------
    def consume_flows(self, batch: FlowBatch) -> None:
        if self._builder is None:
            return
        with self._lock:
            if self._builder is not None:
                self._builder.add(batch)

    @property
    def tracing(self) -> bool:
        """Whether any configuration targets something (else ``consume_flows`` does nothing)."""
        return self._builder is not None

    @property
    def open_connections(self) -> int:
        builder = self._builder
        return builder.open_connections if builder is not None else 0

    # -- configuration ----------------------------------------------------------------------------------
    def _on_traces_configuration(self, name: str | None, spec: Mapping[str, Any] | None) -> None:
        entries: list[TraceConfiguration] = []
        for i, raw in enumerate((spec or {}).get("traceConfiguration") or []):
            try:
                entries.append(TraceConfiguration.model_validate(raw))
            except ValidationError as exc:  # the operator should have marked it Errored; skip it here
                log.warning(
                    "%s: TracesConfiguration %s entry %d ignored: %s",
                    self.id,
                    name,
                    i,
                    format_validation_error(exc, "traceConfiguration"),
                )
        self._watched = entries
        self._dirty.set()
        if self._thread is None or threading.current_thread() is not self._thread:
            self._recompile()

    def _on_cache_change(self, kind: str, old: object, new: object) -> None:
        if kind in ("pods", "namespaces"):
            self._dirty.set()

    def _pods(self, configurations: list[TraceConfiguration]) -> list[PodView]:
        selectors = any(
            (peer is not None and (peer.pod_selector is not None or peer.namespace_selector is not None))
            for entry in configurations
            for target in entry.trace_targets
            for peer in (target.from_, target.to)
        )
        if not selectors:
            return []
        if self._cache is None:
            self._cache = self._extension.cache if self._extension is not None else None
            if self._cache is None:
                log.warning("%s: pod/namespace selectors need the k8sattributes processor's cache", self.id)
                return []
            self._cache.add_listener(self._on_cache_change)
        cache = self._cache
        views = []
        for pod in cache.pods():
            namespace = cache.namespace(pod.namespace)
            views.append(PodView(dict(pod.labels), dict(namespace.labels) if namespace else {}, tuple(pod.ips)))
        return views

    def _recompile(self) -> None:
        with self._compiling:
            self._compile()

    def _compile(self) -> None:
        self._dirty.clear()
        configurations = [*self.config.traces, *self._watched]
        targets: TraceTargets = compile_targets(configurations, self._pods(configurations))
        released = None
        with self._lock:
            if not targets:
                released, self._builder = self._builder, None
            elif self._builder is None:
                host = self._host
                self._builder = SpanBuilder(
                    self.config.builder_settings(),
                    targets,
                    lost=(lambda reason, n: host.count_lost("traces", reason, n)) if host is not None else None,
                )
            else:
                self._builder.targets = targets
        if released is not None:
            self._hand_off(released.take(everything=True))
        if self._host is not None:
            detail = "tracing" if targets else "nothing to trace (no TracesConfiguration, no standalone traces)"
            self._host.report_status(self.id, ComponentStatus.OK, detail)

    # -- output ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.config.flush_interval):
            try:
                if self._dirty.is_set():
                    self._recompile()
                self._emit()
            except Exception:
                log.exception("%s: span hand-off failed", self.id)

    def _emit(self, everything: bool = False) -> None:
        with self._lock:
            spans = self._builder.take(everything=everything) if self._builder is not None else None
        self._hand_off(spans)

    def _hand_off(self, spans: Any) -> None:
        if spans is None or not len(spans):
            return
        if self._host is not None:
            spans.attributes.setdefault("k8s.node.name", self._host.node_name)
        self.spans_out += len(spans)
        self._next.consume_spans(spans)
