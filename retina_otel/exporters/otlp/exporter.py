"""OTLP export of the metric store, flow logs and spans, never blocking the pipeline.

Flow batches and span batches each go into a bounded queue (:class:`~.queue.ExportQueue`, counted in
records); a worker thread takes ``batch_size`` records at a time. Flow logs are encoded straight from the
batch's columns into the bytes of an ``ExportLogsServiceRequest`` (:mod:`.logwire`, no object per record)
and sent by :mod:`.transport` (a generic gRPC call or an HTTP POST); spans are written as the bytes of an
``ExportTraceServiceRequest`` from their views (:mod:`.spanwire`) and sent the same way. When a queue is
full, new batches are dropped and counted in
``controlplane_networkobservability_lost_events_counter{type="otlp_logs"|"otlp_traces",reason="queue_full"}``;
failed exports are counted with ``reason="export_failed"``, records a collector rejects in a partial
success with ``reason="export_rejected"``. Metrics are exported every ``interval`` from a store snapshot by
the SDK's metric exporter (cumulative temporality, the same values Prometheus shows). Transient errors are
retried with backoff within ``timeout``; a dead endpoint costs one worker thread's time, never the
pipeline's, and memory stays bounded by ``queue_size``.

Standard ``OTEL_EXPORTER_OTLP_*`` variables apply for whatever the config leaves unset: endpoint, headers,
timeout, compression, certificates, insecure.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Literal

from opentelemetry.sdk.resources import Resource
from pydantic import Field, field_validator

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.exporters.otlp.convert import SCOPE, snapshots_to_metrics_data
from retina_otel.exporters.otlp.logwire import encode_flow_logs
from retina_otel.exporters.otlp.queue import ExportQueue
from retina_otel.exporters.otlp.transport import Sender, make_sender
from retina_otel.flows import FlowBatch
from retina_otel.traces.spans import SpanBatch

__all__ = ["FACTORY", "HTTP_FACTORY", "OtlpConfig", "OtlpExporter"]

log = logging.getLogger(__name__)


class TlsConfig(ComponentConfig):
    insecure: bool | None = Field(
        None,
        description="gRPC: plaintext instead of TLS; default from OTEL_EXPORTER_OTLP_INSECURE, else "
        "plaintext for http:// endpoints",
    )
    ca_file: str | None = Field(None, description="CA certificate (PEM) to verify the collector")
    cert_file: str | None = Field(None, description="client certificate (PEM) for mTLS")
    key_file: str | None = Field(None, description="client key (PEM) for mTLS")


class OtlpConfig(ComponentConfig):
    endpoint: str | None = Field(
        None,
        description="collector endpoint; gRPC: host:port or http(s)://host:port, HTTP: base URL "
        "(/v1/metrics and /v1/logs are appended). Default: OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    protocol: Literal["grpc", "http/protobuf"] | None = Field(
        None, description="default: grpc for the otlp type, http/protobuf for otlphttp"
    )
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (e.g. auth)")
    tls: TlsConfig = TlsConfig()
    compression: Literal["gzip", "none"] | None = Field(
        None, description="default: OTEL_EXPORTER_OTLP_COMPRESSION or none"
    )
    timeout: float = Field(10.0, gt=0, description="seconds per export, retries included")
    interval: float = Field(10.0, gt=0, description="seconds between metric exports (Retina's metricsInterval)")
    signals: list[Literal["metrics", "logs", "traces"]] = Field(
        default_factory=lambda: list[Literal["metrics", "logs", "traces"]](["metrics", "logs", "traces"]),
        description="what this exporter sends (traces: the span exporter is made when the first spans arrive)",
    )
    queue_size: int = Field(
        100_000, gt=0, description="flow records (and, separately, spans) held while the endpoint is slow or down"
    )
    batch_size: int = Field(2_000, gt=0, description="log records (spans) per export request")
    flush_interval: float = Field(1.0, gt=0, description="seconds before a partial batch of flow logs (spans) is sent")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_nonempty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty URL or host:port, or left out to use OTEL_EXPORTER_OTLP_ENDPOINT")
        return value


class OtlpExporter:
    def __init__(self, settings: CreateSettings, config: OtlpConfig, default_protocol: str) -> None:
        self.id = settings.id
        self.config = config
        self.protocol = config.protocol or default_protocol
        self._host: Host | None = None
        self._resource = Resource({})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metric_exporter: Any = None
        self._log_sender: Sender | None = None
        self._span_sender: Sender | None = None
        self._logs: ExportQueue[FlowBatch] | None = None
        self._spans: ExportQueue[SpanBatch] | None = None

    # -- metric exporter construction (SDK) ----------------------------------------------------------------
    def _endpoint(self, path: str) -> str | None:
        endpoint = self.config.endpoint
        if endpoint is None:
            return None
        if self.protocol == "grpc":
            return endpoint
        base = endpoint if "://" in endpoint else f"http://{endpoint}"
        return base.rstrip("/") + path

    def _exporter_settings(self) -> dict[str, Any]:
        """Keyword arguments of the SDK's metric exporter for this protocol (endpoint excepted for HTTP)."""
        cfg = self.config
        compression: Any = None
        if cfg.compression is not None:
            if self.protocol == "grpc":
                from grpc import Compression

                compression = Compression.Gzip if cfg.compression == "gzip" else Compression.NoCompression
            else:
                from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

                compression = HttpCompression.Gzip if cfg.compression == "gzip" else HttpCompression.NoCompression
        headers = dict(cfg.headers) or None
        if self.protocol != "grpc":
            return dict(
                certificate_file=cfg.tls.ca_file,
                client_key_file=cfg.tls.key_file,
                client_certificate_file=cfg.tls.cert_file,
                headers=headers,
                timeout=cfg.timeout,
                compression=compression,
            )
        credentials = None
        if cfg.tls.ca_file or cfg.tls.cert_file:
            import grpc

            def read(path: str | None) -> bytes | None:
                return open(path, "rb").read() if path else None

            credentials = grpc.ssl_channel_credentials(
                read(cfg.tls.ca_file), read(cfg.tls.key_file), read(cfg.tls.cert_file)
            )
        insecure = cfg.tls.insecure
        if insecure is None and cfg.endpoint and cfg.endpoint.startswith("http://"):
            insecure = True
        return dict(
            endpoint=self._endpoint(""),
            insecure=insecure,
            credentials=credentials,
            headers=headers,
            timeout=cfg.timeout,
            compression=compression,
        )

    def _make_exporters(self) -> None:
        common = self._exporter_settings()
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            if "metrics" in self.config.signals:
                self._metric_exporter = OTLPMetricExporter(**common)
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpMetricExporter,
            )

            if "metrics" in self.config.signals:
                self._metric_exporter = HttpMetricExporter(endpoint=self._endpoint("/v1/metrics"), **common)

    def _queue(self, signal: str, split: Any, export: Any) -> ExportQueue[Any]:
        host = self._host
        assert host is not None
        return ExportQueue(
            f"{self.id}-{signal}",
            queue_size=self.config.queue_size,
            batch_size=self.config.batch_size,
            flush_interval=self.config.flush_interval,
            split=split,
            export=export,
            lost=lambda reason, n: host.count_lost(f"otlp_{signal}", reason, n),
        )

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        if self._threads or self._logs is not None:
            return
        self._host = host
        attributes = {"k8s.node.name": host.node_name, "service.name": "retina-otel"}
        if host.cluster_name:
            attributes["k8s.cluster.name"] = host.cluster_name
        self._resource = Resource.create(attributes)
        self._stop.clear()
        self._make_exporters()
        if self._metric_exporter is not None:
            self._threads.append(threading.Thread(target=self._metrics_loop, name=f"{self.id}-metrics", daemon=True))
        for t in self._threads:
            t.start()
        if "logs" in self.config.signals:
            self._log_sender = make_sender(self.config, self.protocol, "logs", self._stop)
            self._logs = self._queue("logs", _split_flows, self._export_logs)
            self._logs.start()

    def shutdown(self) -> None:
        self._stop.set()
        timeout = self.config.timeout + 5
        for t in self._threads:
            t.join(timeout=timeout)
        self._threads = []
        for queue in (self._logs, self._spans):
            if queue is not None:
                queue.stop(timeout)
        self._logs = None
        with self._lock:
            self._spans = None
        if self._metric_exporter is not None:
            try:
                self._metric_exporter.shutdown()
            except Exception:
                log.debug("otlp exporter shutdown failed", exc_info=True)
        for sender in (self._log_sender, self._span_sender):
            if sender is not None:
                sender.close()
        self._metric_exporter = self._span_sender = self._log_sender = None

    # -- metrics ------------------------------------------------------------------------------------
    def export_metrics_now(self) -> bool:
        """One export of the current store; True on success."""
        assert self._host is not None
        from opentelemetry.sdk.metrics.export import MetricExportResult

        snapshots = self._host.metrics.collect()
        if not snapshots:
            return True  # in no metrics pipeline: nothing is this exporter's to send
        data = snapshots_to_metrics_data(snapshots, self._resource)
        try:
            result = self._metric_exporter.export(data, timeout_millis=self.config.timeout * 1000)
        except Exception as exc:
            log.warning("%s: metric export failed: %s", self.id, exc)
            result = MetricExportResult.FAILURE
        ok = result is MetricExportResult.SUCCESS
        if not ok:
            self._host.count_lost("otlp_metrics", "export_failed", 1)
        return bool(ok)

    def _metrics_loop(self) -> None:
        while not self._stop.wait(self.config.interval):
            self.export_metrics_now()
        self.export_metrics_now()  # final export on shutdown

    # -- logs ---------------------------------------------------------------------------------------
    def consume_flows(self, batch: FlowBatch) -> None:
        if self._logs is not None:
            self._logs.put(batch)

    @property
    def queued_records(self) -> int:
        return self._logs.queued if self._logs is not None else 0

    def _export_logs(self, batch: FlowBatch) -> bool:
        """Raises on a failed export (the queue counts the batch as ``export_failed``)."""
        assert self._log_sender is not None and self._host is not None
        rejected = self._log_sender.send(encode_flow_logs(batch, self._resource, SCOPE))
        if rejected:
            self._host.count_lost("otlp_logs", "export_rejected", min(rejected, len(batch)))
        return True

    # -- traces -------------------------------------------------------------------------------------
    def consume_spans(self, batch: SpanBatch) -> None:
        if "traces" not in self.config.signals or self._host is None or self._stop.is_set():
            return
        with self._lock:
            if self._spans is None:
                self._span_sender = make_sender(self.config, self.protocol, "traces", self._stop)
                self._spans = self._queue("traces", SpanBatch.split, self._export_spans)
                self._spans.start()
            queue = self._spans
        queue.put(batch)

    @property
    def queued_spans(self) -> int:
        return self._spans.queued if self._spans is not None else 0

    def _export_spans(self, batch: SpanBatch) -> bool:
        """Raises on a failed export (the queue counts the batch as ``export_failed``)."""
        from retina_otel.exporters.otlp.spanwire import encode_spans

        assert self._span_sender is not None and self._host is not None
        rejected = self._span_sender.send(encode_spans(batch, self._resource, SCOPE))
        if rejected:
            self._host.count_lost("otlp_traces", "export_rejected", min(rejected, len(batch)))
        return True


def _split_flows(batch: FlowBatch, n: int) -> tuple[FlowBatch, FlowBatch]:
    dns = batch.dns
    head = dataclasses.replace(batch, records=batch.records[:n], dns=dns[:n] if dns is not None else None)
    rest = dataclasses.replace(batch, records=batch.records[n:], dns=dns[n:] if dns is not None else None)
    return head, rest


def _create_grpc(settings: CreateSettings, config: OtlpConfig, _next: FlowConsumer | None) -> OtlpExporter:
    return OtlpExporter(settings, config, "grpc")


def _create_http(settings: CreateSettings, config: OtlpConfig, _next: FlowConsumer | None) -> OtlpExporter:
    return OtlpExporter(settings, config, "http/protobuf")


_SIGNALS = ("logs", "metrics", "traces")
FACTORY: Factory[OtlpConfig] = Factory("otlp", "exporter", OtlpConfig, _create_grpc, "OTLP over gRPC", signals=_SIGNALS)
HTTP_FACTORY: Factory[OtlpConfig] = Factory(
    "otlphttp", "exporter", OtlpConfig, _create_http, "OTLP over HTTP/protobuf", signals=_SIGNALS
)
