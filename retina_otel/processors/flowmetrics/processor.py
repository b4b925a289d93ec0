"""The ``flowmetrics`` connector (logs -> metrics) and processor: Retina's pod-level (adv_*) metrics from
enriched flow batches.

``consume_flows`` aggregates each batch with numpy (:mod:`.aggregate`), writes one value per series
into the agent's :class:`~retina_otel.metrics.store.MetricStore`, then passes the batch on unchanged.

What is emitted comes from a :class:`~.spec.Plan`, swapped whole when the configuration changes:
Retina's annotation defaults (``enable_annotations``), else the Accepted MetricsConfiguration (watched
when ``metrics_configuration.enabled``), else this processor's own ``metrics:`` list.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from retina_otel.component import ComponentStatus, CreateSettings, FlowConsumer, Host
from retina_otel.extension_keys import K8S_CACHE
from retina_otel.flows import FlowBatch
from retina_otel.metrics.deferred import Deferred
from retina_otel.metrics.store import Family, MetricKind, MetricStore
from retina_otel.processors.flowmetrics.aggregate import Aggregator, BatchResult
from retina_otel.processors.flowmetrics.config import FlowMetricsConfig
from retina_otel.processors.flowmetrics.spec import (
    DESCRIPTIONS,
    AdvMetric,
    MetricPlan,
    Plan,
    SpecError,
    annotation_plan,
    build_plan,
    parse_duration,
)

__all__ = ["FlowMetricsProcessor", "NamespaceFilterHook"]

log = logging.getLogger(__name__)

NamespaceFilterHook = Callable[..., None]
"""Called as ``hook(include=[...], exclude=[...])`` (an empty list: no such filter) when the namespace
filter changes; k8sattributes' ``set_namespace_filter`` has this signature."""

_NODE_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "networkobservability_forward_count": ("Total forwarded packets", ("direction",)),
    "networkobservability_forward_bytes": ("Total forwarded bytes", ("direction",)),
    "networkobservability_drop_count": ("Total dropped packets", ("reason", "direction")),
    "networkobservability_drop_bytes": ("Total dropped bytes", ("reason", "direction")),
    "networkobservability_dns_request_count": ("Total DNS requests", ()),
    "networkobservability_dns_response_count": ("Total DNS responses", ()),
}

_POD_NAMESPACE_LABELS = (
    ("podname", "namespace"),
    ("source_podname", "source_namespace"),
    ("destination_podname", "destination_namespace"),
)
_IP_LABELS = ("ip", "source_ip", "destination_ip")


class FlowMetricsProcessor:
    """Derives Retina's advanced metrics from flow batches; see ``docs/processors/flowmetrics.md``."""

    def __init__(
        self,
        settings: CreateSettings,
        config: FlowMetricsConfig,
        next_consumer: FlowConsumer | None,
        *,
        namespace_filter: NamespaceFilterHook | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self._next = next_consumer
        self._namespace_filter = namespace_filter
        self._aggregator = Aggregator(node_metrics=config.node_metrics)
        self._lock = threading.RLock()  # configuration changes and family bookkeeping
        self._host: Host | None = None
        self._store: MetricStore | None = None
        self._families: dict[str, Family] = {}
        self._plans: dict[AdvMetric, MetricPlan] = {}
        self._plan: Plan = Plan()
        self._static_plan: Plan = Plan()
        self._crd_plan: Plan | None = None
        self._watcher: Any = None
        self._pending_forget: Deferred[frozenset[str]] = Deferred()
        self._started = False
        self._errors = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        with self._lock:
            if self._started:
                return
            self._host = host
            self._store = host.metrics
            self._static_plan = self._build_static_plan()
            self._started = True
            self._hook_extensions(host)
            self._apply(self._choose_plan())
            self._store.add_collect_hook(self._sweep_forgotten)
        source = self.config.metrics_configuration
        if self.config.pod_level and source.enabled and not self.config.enable_annotations:
            from retina_otel.metricsconfig import MetricsConfigurationWatcher

            watcher = MetricsConfigurationWatcher(
                self._on_metrics_configuration,
                api_url=source.api_url,
                kubeconfig=source.kubeconfig,
                context=source.context,
                relist_seconds=source.relist_seconds,
                watch_timeout_seconds=source.watch_timeout_seconds,
            )
            self._watcher = watcher
            watcher.start()

    def shutdown(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.shutdown()
        with self._lock:
            self._started = False

    # -- hooks for other components -----------------------------------------------------------------
    def forget_pods(self, pods: Iterable[str], delay_seconds: float | None = None) -> int:
        """Remove every adv_* series of the given pods: ``namespace/name`` matches series whose podname
        (or source_/destination_podname) and namespace label of the same side are that pod's (a series
        without the namespace label cannot tell same-named pods of two namespaces apart and is left to
        expire, unless the bare name is given too); an IP address matches the ip labels; a bare name
        matches podname in any namespace. k8sattributes calls it with ``namespace/name``, the IPs and, when
        no live pod of another namespace has that name, the bare name, when a pod's enrichment grace
        period ends. With a delay (default ``pod_forget_delay_seconds``) the removal happens later, at the first
        batch or scrape after it. Returns the number of series removed now."""
        wanted = frozenset(str(p) for p in pods if p)
        if not wanted:
            return 0
        delay = self.config.pod_forget_delay_seconds if delay_seconds is None else delay_seconds
        if delay > 0:
            self._pending_forget.add(wanted, delay)
            return 0
        return self._remove_pods(wanted)

    def _remove_pods(self, wanted: frozenset[str]) -> int:
        qualified = {tuple(p.split("/", 1)) for p in wanted if "/" in p}  # (namespace, name)
        plain = {p for p in wanted if "/" not in p}  # IPs, and bare names
        removed = 0
        with self._lock:
            families = list(self._families.values())
        for family in families:
            for pod_label, namespace_label in _POD_NAMESPACE_LABELS:
                if qualified:
                    removed += family.remove_where_all((namespace_label, pod_label), qualified)
                if plain:
                    removed += family.remove_where(pod_label, plain)
            for label in _IP_LABELS:
                if plain:
                    removed += family.remove_where(label, plain)
        return removed

    def _sweep_forgotten(self) -> None:
        for pods in self._pending_forget.due():
            self._remove_pods(pods)

    # -- the flow path -----------------------------------------------------------------------------
    def consume_flows(self, batch: FlowBatch) -> None:
        plan = self._plan
        families = self._families
        if self._started and len(batch) and (plan.metrics or self.config.node_metrics):
            try:
                self._write(self._aggregator.process(batch, plan), families)
            except Exception:  # a bad batch must not stop the pipeline
                self._errors += 1
                if self._errors <= 5 or self._errors % 1000 == 0:
                    log.exception("flowmetrics: failed to aggregate a batch (%d so far)", self._errors)
        self._sweep_forgotten()
        if self._next is not None:
            self._next.consume_flows(batch)

    def _write(self, result: BatchResult, families: Mapping[str, Family]) -> None:
        for name, series in result.counters.items():
            family = families.get(name)
            if family is not None and series:
                family.add_many(series.items())
        for name, observations in result.histograms.items():
            family = families.get(name)
            if family is not None:
                for labels, values in observations:
                    family.observe_many(labels, values)

    # -- configuration -----------------------------------------------------------------------------
    def _build_static_plan(self) -> Plan:
        cfg = self.config
        default_ttl = parse_duration(cfg.default_ttl)
        if cfg.enable_annotations:
            return annotation_plan(
                remote=cfg.remote_context, max_series=cfg.max_series_per_metric, default_ttl=default_ttl
            )
        options = [m.model_dump(by_alias=True, exclude_none=True) for m in cfg.metrics]
        return build_plan(
            options,
            remote=cfg.remote_context,
            include=cfg.namespaces.include,
            exclude=cfg.namespaces.exclude,
            max_series=cfg.max_series_per_metric,
            default_ttl=default_ttl,
            source="config",
        )

    def _choose_plan(self) -> Plan:
        if not self.config.pod_level:
            return Plan(source="disabled")
        if self._crd_plan is not None and not self.config.enable_annotations:
            return self._crd_plan
        return self._static_plan

    def _on_metrics_configuration(self, name: str | None, spec: Mapping[str, Any] | None) -> None:
        """Watcher callback: the Accepted MetricsConfiguration's spec, or ``None`` when none is Accepted."""
        cfg = self.config
        plan: Plan | None = None
        if spec is not None:
            namespaces = spec.get("namespaces") or {}
            try:
                plan = build_plan(
                    list(spec.get("contextOptions") or ()),
                    remote=cfg.remote_context,
                    include=namespaces.get("include"),
                    exclude=namespaces.get("exclude"),
                    max_series=cfg.max_series_per_metric,
                    default_ttl=parse_duration(cfg.default_ttl),
                    source=f"metricsconfiguration/{name}",
                )
            except SpecError as exc:
                log.error("flowmetrics: MetricsConfiguration %s not applied: %s", name, exc)
                if self._host is not None:
                    detail = f"MetricsConfiguration {name}: {exc}"
                    self._host.report_status(self.settings.id, ComponentStatus.OK, detail)
                return
        with self._lock:
            self._crd_plan = plan
            if self._started:
                self._apply(self._choose_plan())

    def apply_plan(self, plan: Plan) -> None:
        """Apply a plan directly (tests, embedding)."""
        with self._lock:
            self._apply(plan)

    @property
    def plan(self) -> Plan:
        return self._plan

    def _apply(self, plan: Plan) -> None:
        """Create, reconfigure or remove families so the store matches ``plan``. Caller holds the lock."""
        store = self._store
        if store is None:
            self._plan = plan
            return
        families: dict[str, Family] = {}
        new_plans: dict[AdvMetric, MetricPlan] = {}
        for metric, mp in plan.metrics.items():
            old = self._plans.get(metric)
            if old is not None and old.label_names != mp.label_names:
                store.remove(mp.name)  # Retina resets a metric whose context labels change
            family = self._declare(store, mp)
            if family is None:
                continue
            family.configure(ttl_seconds=mp.ttl_seconds, max_series=mp.max_series)
            families[mp.name] = family
            new_plans[metric] = mp
        for metric, old in self._plans.items():
            if metric not in new_plans:
                store.remove(old.name)
        if self.config.node_metrics:
            for name, (description, labels) in _NODE_FAMILIES.items():
                try:
                    families[name] = store.counter(name, description, labels)
                except ValueError as exc:
                    log.warning("flowmetrics: node metric %s not written: %s", name, exc)
        self._plans = new_plans
        self._families = families
        previous = self._plan
        self._plan = plan
        if (previous.include_namespaces, previous.exclude_namespaces) != (
            plan.include_namespaces,
            plan.exclude_namespaces,
        ) or previous.source == "none":
            self._call_namespace_hook(plan)
        log.info("flowmetrics: applied %s with %s", plan.source, ", ".join(sorted(families)) or "no metrics")

    def _declare(self, store: MetricStore, mp: MetricPlan) -> Family | None:
        try:
            if mp.metric is AdvMetric.DNS_LATENCY:
                return store.histogram(
                    mp.name,
                    DESCRIPTIONS[mp.metric],
                    mp.label_names,
                    bounds=self.config.dns_latency_buckets_ms,
                    unit="ms",
                    ttl_seconds=mp.ttl_seconds,
                    max_series=mp.max_series,
                )
            return store.family(
                mp.name,
                DESCRIPTIONS[mp.metric],
                MetricKind.COUNTER,
                mp.label_names,
                ttl_seconds=mp.ttl_seconds,
                max_series=mp.max_series,
            )
        except ValueError as exc:  # declared elsewhere with other labels
            log.error("flowmetrics: cannot declare %s: %s", mp.name, exc)
            return None

    def _call_namespace_hook(self, plan: Plan) -> None:
        hook = self._namespace_filter
        if hook is None:
            return
        include = sorted(plan.include_namespaces or ())
        exclude = sorted(plan.exclude_namespaces)
        try:
            hook(include=include, exclude=exclude)
        except Exception:
            log.exception("flowmetrics: namespace filter hook failed")

    def _hook_extensions(self, host: Host) -> None:
        """Wire to k8sattributes' shared metadata (namespace filter, pod deletions) when the agent has it."""
        k8s = host.get_extension(K8S_CACHE)
        if k8s is None:
            return
        if self._namespace_filter is None:
            self._namespace_filter = k8s.set_namespace_filter
        k8s.add_pod_deletion_listener(self.forget_pods)
