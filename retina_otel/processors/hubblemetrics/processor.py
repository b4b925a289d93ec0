"""The ``hubblemetrics`` processor and connector: Hubble's metrics from the agent's flows.

Retina in Hubble mode serves Hubble's metric handlers on Hubble's port (9965) next to its own metrics
on 10093. The processor form does the same from the flow batches it sees: it aggregates them with
:class:`~.aggregate.HubbleAggregator` into a metric store of its own (so the ``hubble_*`` series are not
on the agent's 10093 endpoint) and serves that store with the agent's Prometheus renderer on
``endpoint``; the batch is passed on unchanged. The connector form (logs -> metrics) writes the families
into its metrics view instead, for the metrics pipelines that list it as a receiver (a ``prometheus``
exporter on :9965 there, ``otlp`` too).
"""

from __future__ import annotations

import logging
import threading

from retina_otel.component import CreateSettings, FlowConsumer, Host
from retina_otel.exporters.prometheus import PrometheusConfig, PrometheusExporter, with_cluster_label
from retina_otel.extension_keys import K8S_CACHE
from retina_otel.flows import FlowBatch
from retina_otel.metrics.deferred import Deferred
from retina_otel.metrics.store import Family, MetricStore
from retina_otel.processors.hubblemetrics.aggregate import FAMILIES, HubbleAggregator, family_labels
from retina_otel.processors.hubblemetrics.config import HubbleMetricsConfig
from retina_otel.processors.hubblemetrics.spec import parse_metric

__all__ = ["HubbleMetricsProcessor"]

log = logging.getLogger(__name__)


class HubbleMetricsProcessor:
    """See ``docs/processors/hubblemetrics.md``."""

    def __init__(
        self,
        settings: CreateSettings,
        config: HubbleMetricsConfig,
        next_consumer: FlowConsumer | None,
        *,
        connector: bool = False,
    ) -> None:
        self.settings = settings
        self.config = config
        self._next = next_consumer
        self._connector = connector
        self.specs = [parse_metric(text) for text in config.metrics]
        self._aggregator = HubbleAggregator(self.specs)
        self.store = MetricStore()  # the processor form's own; the connector writes into host.metrics
        self._families: dict[str, Family] = {}
        self._server: PrometheusExporter | None = None
        self._started = False
        self._errors = 0
        self._aggregate_lock = threading.Lock()
        self._pending_forget: Deferred[set[str]] = Deferred()  # pod context values
        # Families with a `pod` context: Hubble removes a deleted pod's series from them.
        self._pod_labels = {
            name: [label for label, present in (("source", spec.context.has_source),
                                                 ("destination", spec.context.has_destination)) if present]
            for spec in self.specs
            if "pod" in spec.context.identifiers()
            for name, _help in FAMILIES[spec.handler]
        }

    @property
    def address(self) -> tuple[str, int]:
        """Where the hubble endpoint listens (useful with port 0)."""
        assert self._server is not None, "no endpoint served"
        return self._server.address

    def start(self, host: Host) -> None:
        if self._started:
            return
        if self._connector:
            self.store = host.metrics
        ttl = self.config.series_ttl_seconds or None
        for spec in self.specs:
            labels = family_labels(spec)
            for name, help_text in FAMILIES[spec.handler]:
                self._families[name] = self.store.counter(
                    name, help_text, labels, ttl_seconds=ttl, max_series=self.config.max_series_per_metric
                )
        cache = host.get_extension(K8S_CACHE)
        if cache is not None and self._pod_labels:
            cache.add_pod_deletion_listener(self.forget_pods)
        if self.config.endpoint and not self._connector:
            settings = CreateSettings(f"{self.settings.id}/endpoint", "exporter")
            server = PrometheusExporter(settings, PrometheusConfig(endpoint=self.config.endpoint))
            server.serve(self.store, with_cluster_label({}, self.config.cluster_label, host.cluster_name))
            self._server = server
        self._started = True

    def shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        self._started = False

    def forget_pods(self, pods: list[str], *, delay_seconds: float | None = None) -> int:
        """k8sattributes' pod-deletion hook (pod names and addresses; ``delay_seconds``: its grace period):
        as Hubble does for a deleted pod, remove the series whose ``source`` or ``destination`` is the pod
        in a ``pod`` context (after the delay, at a later batch). Returns the series removed now."""
        with self._aggregate_lock:
            values = self._aggregator.pod_values({p for p in pods if p})
        if not values:
            return 0
        if delay_seconds:
            self._pending_forget.add(values, delay_seconds)
            return 0
        return self._remove(values)

    def _remove(self, values: set[str]) -> int:
        removed = 0
        for name, labels in self._pod_labels.items():
            family = self._families.get(name)
            if family is not None:
                removed += sum(family.remove_where(label, values) for label in labels)
        return removed

    def _sweep_forgotten(self) -> None:
        for values in self._pending_forget.due():
            self._remove(values)

    def consume_flows(self, batch: FlowBatch) -> None:
        if self._started and len(batch):
            try:
                # Receivers call from their own threads; the aggregator's per-generation tables are shared.
                with self._aggregate_lock:
                    result = self._aggregator.process(batch)
                for name, series in result.items():
                    family = self._families.get(name)
                    if family is not None and series:
                        family.add_many(series.items())
            except Exception:  # a bad batch must not stop the pipeline
                self._errors += 1
                if self._errors <= 5 or self._errors % 1000 == 0:
                    log.exception("hubblemetrics: failed to aggregate a batch (%d so far)", self._errors)
        self._sweep_forgotten()
        if self._next is not None:
            self._next.consume_flows(batch)
