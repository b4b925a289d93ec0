"""Serves the metric store on ``/metrics`` in the Prometheus text exposition format (0.0.4).

The text is rendered at every scrape from a store snapshot (nothing is mutated between scrapes).
Every family keeps its exact name: Retina's dashboards query ``networkobservability_forward_count``,
and Retina's Go client exposes counters without a ``_total`` suffix, which prometheus_client's
renderers would append (and OpenMetrics requires), so the text format is rendered here directly, as
the Go client writes it, and is always the format served.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any

from pydantic import Field

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.endpoints import Endpoint, parse_endpoint
from retina_otel.httpserve import HttpServer, send_body
from retina_otel.metrics.store import FamilySnapshot, HistogramValue, MetricKind, MetricStore

__all__ = ["FACTORY", "PrometheusConfig", "PrometheusExporter", "render", "render_snapshots", "with_cluster_label"]

log = logging.getLogger(__name__)


class PrometheusConfig(ComponentConfig):
    endpoint: Endpoint = Field("0.0.0.0:10093", description="host:port to serve /metrics on (Retina's port 10093)")
    const_labels: dict[str, str] = Field(
        default_factory=dict, description="labels added to every series (e.g. cluster); none by default"
    )
    cluster_label: str = Field(
        "cluster",
        pattern=r"^([a-zA-Z_][a-zA-Z0-9_]*)?$",
        description="label that carries `service.cluster_name` on every series when the cluster name is set "
        "(Retina's dashboards filter on `cluster`); empty: none (e.g. when Prometheus adds its own cluster label). "
        "A same-named key in `const_labels` wins",
    )


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def with_cluster_label(const_labels: dict[str, str], cluster_label: str, cluster_name: str) -> dict[str, str]:
    """``const_labels`` plus ``cluster_label=cluster_name`` when both are set (a same-named key wins)."""
    labels = dict(const_labels)
    if cluster_label and cluster_name:
        labels.setdefault(cluster_label, cluster_name)
    return labels


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    """Go's formatting, as Retina's client prints values: integers without a decimal point."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str) -> str:
    inner = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True))
    if extra:
        inner = f"{inner},{extra}" if inner else extra
    return f"{{{inner}}}" if inner else ""


_TYPES = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge", MetricKind.HISTOGRAM: "histogram"}


class SeriesTextCache:
    """Rendered ``name{labels}`` prefixes of the previous scrape, so a steady set of series costs one
    dict lookup each instead of escaping and joining every label again. Holds only the series of the
    last scrape, so it never outgrows the store."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, tuple[str, ...]], str] = {}

    def render(self, snapshots: Iterable[FamilySnapshot], const_labels: dict[str, str] | None = None) -> bytes:
        extra = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted((const_labels or {}).items()))
        previous = self._prefixes
        current: dict[tuple[str, tuple[str, ...]], str] = {}
        out: list[str] = []
        for snap in snapshots:
            if not snap.series:
                continue
            name = snap.name
            out.append(f"# HELP {name} {_escape_help(snap.description or name)}\n# TYPE {name} {_TYPES[snap.kind]}\n")
            names = snap.label_names
            if snap.kind is MetricKind.HISTOGRAM:
                bounds = [_number(b) for b in snap.bounds] + ["+Inf"]
                for labels, value, _start in snap.series:
                    assert isinstance(value, HistogramValue)
                    base = _labels(names, labels, extra)
                    inner = base[1:-1] + "," if base else ""
                    cumulative = 0
                    for bound, count in zip(bounds, value.bucket_counts, strict=True):
                        cumulative += count
                        out.append(f'{name}_bucket{{{inner}le="{bound}"}} {cumulative}\n')
                    out.append(f"{name}_sum{base} {_number(value.total)}\n{name}_count{base} {value.count}\n")
                continue
            for labels, value, _start in snap.series:
                key = (name, labels)
                prefix = previous.get(key)
                if prefix is None:
                    prefix = f"{name}{_labels(names, labels, extra)} "
                current[key] = prefix
                out.append(prefix)
                out.append(_number(value))  # type: ignore[arg-type]
                out.append("\n")
        self._prefixes = current
        return "".join(out).encode()


def render_snapshots(snapshots: Iterable[FamilySnapshot], const_labels: dict[str, str] | None = None) -> bytes:
    """Prometheus text format 0.0.4 for store snapshots, every family under its exact name."""
    return SeriesTextCache().render(snapshots, const_labels)


def render(store: MetricStore, const_labels: dict[str, str] | None = None) -> bytes:
    """The exposition text of a store, as a scrape gets it."""
    return render_snapshots(store.collect(), const_labels)


def _handler_class(exporter: PrometheusExporter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "retina-otel"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/metrics/"):
                self.send_error(404, "only /metrics is served here")
                return
            try:
                body = exporter.render()
            except Exception:
                log.exception("rendering /metrics failed")
                self.send_error(500, "rendering metrics failed; see the agent's log")
                return
            headers: dict[str, str] = {}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            send_body(self, 200, CONTENT_TYPE, body, headers)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("prometheus: " + format, *args)

    return Handler


class PrometheusExporter:
    def __init__(self, settings: CreateSettings, config: PrometheusConfig) -> None:
        self.id = settings.id
        self.config = config
        self._store: MetricStore | None = None
        self._http = HttpServer(f"{self.id}-http", _handler_class(self))
        self._text_cache = SeriesTextCache()
        self._const_labels: dict[str, str] = dict(config.const_labels)
        self._render_lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (useful with port 0)."""
        return self._http.address

    def render(self) -> bytes:
        assert self._store is not None
        with self._render_lock:
            return self._text_cache.render(self._store.collect(), self._const_labels)

    def start(self, host: Host) -> None:
        cfg = self.config
        self.serve(host.metrics, with_cluster_label(cfg.const_labels, cfg.cluster_label, host.cluster_name))

    def serve(self, store: MetricStore, const_labels: dict[str, str]) -> None:
        """Serve ``store`` with ``const_labels`` on every series (what ``start`` does with the agent's store;
        a component with a store of its own, like ``hubblemetrics``, calls it directly)."""
        if self._http.running:
            return
        self._store = store
        self._const_labels = dict(const_labels)
        address, port = parse_endpoint(self.config.endpoint, field="exporters.prometheus.endpoint")
        self._http.start(address, port)
        log.info("prometheus exporter serving http://%s:%d/metrics", *self.address)

    def shutdown(self) -> None:
        self._http.shutdown()


def _create(settings: CreateSettings, config: PrometheusConfig, _next: FlowConsumer | None) -> PrometheusExporter:
    return PrometheusExporter(settings, config)


FACTORY: Factory[PrometheusConfig] = Factory(
    type="prometheus",
    kind="exporter",
    config_model=PrometheusConfig,
    create=_create,
    description="Prometheus /metrics (text format) with Retina's metric names",
    signals=("metrics",),
)
