"""OTLP export of the metric store and of flow logs, never blocking the pipeline.

Flow batches go into a bounded queue (counted in records); a worker thread turns them into log records
and exports them with the SDK's OTLP log exporter, ``batch_size`` records at a time (so at most that
many exist as SDK objects). When the queue is full, new batches are dropped and counted in
``controlplane_networkobservability_lost_events_counter{type="otlp_logs",reason="queue_full"}``;
failed exports are counted with ``reason="export_failed"``. Metrics are exported every ``interval`` from
a store snapshot (cumulative temporality, the same values Prometheus shows). The SDK exporters retry
transient errors with backoff within ``timeout``; a dead endpoint costs one worker thread's time, never
the pipeline's, and memory stays bounded by ``queue_size``.

Standard ``OTEL_EXPORTER_OTLP_*`` variables apply (the SDK reads them) for whatever the config leaves
unset: endpoint, headers, timeout, compression, certificates, insecure.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Literal

from opentelemetry.sdk.resources import Resource
from pydantic import Field, field_validator

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.exporters.otlp.convert import flows_to_log_records, snapshots_to_metrics_data
from retina_otel.flows import FlowBatch

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
    signals: list[Literal["metrics", "logs"]] = Field(
        default_factory=lambda: list[Literal["metrics", "logs"]](["metrics", "logs"]),
        description="what this exporter sends",
    )
    queue_size: int = Field(100_000, gt=0, description="flow records held while the endpoint is slow or down")
    batch_size: int = Field(2_000, gt=0, description="log records per export request")
    flush_interval: float = Field(1.0, gt=0, description="seconds before a partial batch of flow logs is sent")

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
        self._queue: collections.deque[FlowBatch] = collections.deque()
        self._queued_records = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metric_exporter: Any = None
        self._log_exporter: Any = None
        self.exported_records = 0
        self.exported_metric_batches = 0

    # -- exporter construction (SDK) ----------------------------------------------------------------
    def _endpoint(self, path: str) -> str | None:
        endpoint = self.config.endpoint
        if endpoint is None:
            return None
        if self.protocol == "grpc":
            return endpoint
        base = endpoint if "://" in endpoint else f"http://{endpoint}"
        return base.rstrip("/") + path

    def _make_exporters(self) -> None:
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
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

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
            common: dict[str, Any] = dict(
                endpoint=self._endpoint(""),
                insecure=insecure,
                credentials=credentials,
                headers=headers,
                timeout=cfg.timeout,
                compression=compression,
            )
            if "metrics" in cfg.signals:
                self._metric_exporter = OTLPMetricExporter(**common)
            if "logs" in cfg.signals:
                self._log_exporter = OTLPLogExporter(**common)
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import (
                OTLPLogExporter as HttpLogExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpMetricExporter,
            )

            tls: dict[str, Any] = dict(
                certificate_file=cfg.tls.ca_file,
                client_key_file=cfg.tls.key_file,
                client_certificate_file=cfg.tls.cert_file,
                headers=headers,
                timeout=cfg.timeout,
                compression=compression,
            )
            if "metrics" in cfg.signals:
                self._metric_exporter = HttpMetricExporter(endpoint=self._endpoint("/v1/metrics"), **tls)
            if "logs" in cfg.signals:
                self._log_exporter = HttpLogExporter(endpoint=self._endpoint("/v1/logs"), **tls)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        if self._threads:
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
        if self._log_exporter is not None:
            self._threads.append(threading.Thread(target=self._logs_loop, name=f"{self.id}-logs", daemon=True))
        for t in self._threads:
            t.start()

    def shutdown(self) -> None:
        if not self._threads:
            return
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout=self.config.timeout + 5)
        self._threads = []
        for exporter in (self._metric_exporter, self._log_exporter):
            if exporter is not None:
                try:
                    exporter.shutdown()
                except Exception:
                    log.debug("otlp exporter shutdown failed", exc_info=True)

    # -- metrics ------------------------------------------------------------------------------------
    def export_metrics_now(self) -> bool:
        """One export of the current store; True on success."""
        assert self._host is not None
        from opentelemetry.sdk.metrics.export import MetricExportResult

        data = snapshots_to_metrics_data(self._host.metrics.collect(), self._resource)
        try:
            result = self._metric_exporter.export(data, timeout_millis=self.config.timeout * 1000)
        except Exception as exc:
            log.warning("%s: metric export failed: %s", self.id, exc)
            result = MetricExportResult.FAILURE
        ok = result is MetricExportResult.SUCCESS
        if ok:
            self.exported_metric_batches += 1
        else:
            self._host.count_lost("otlp_metrics", "export_failed", 1)
        return bool(ok)

    def _metrics_loop(self) -> None:
        while not self._stop.wait(self.config.interval):
            self.export_metrics_now()
        self.export_metrics_now()  # final export on shutdown

    # -- logs ---------------------------------------------------------------------------------------
    def consume_flows(self, batch: FlowBatch) -> None:
        if self._log_exporter is None or not len(batch):
            return
        with self._wake:
            if self._queued_records + len(batch) > self.config.queue_size:
                dropped = len(batch)
            else:
                self._queue.append(batch)
                self._queued_records += len(batch)
                dropped = 0
                if self._queued_records >= self.config.batch_size:
                    self._wake.notify()
        if dropped and self._host is not None:
            self._host.count_lost("otlp_logs", "queue_full", dropped)

    @property
    def queued_records(self) -> int:
        return self._queued_records

    def _take(self) -> FlowBatch | None:
        """At most ``batch_size`` queued records (the head batch is split when larger), or None.

        Only that many records exist as SDK log records at a time (a Python object per record, some
        kilobytes each): converting whole queued batches at once cost ~100 MB of peak RSS in a churn
        of 150,000 flows with the endpoint down. The taken records leave ``queued_records`` when they
        are exported (or counted as lost), so the queue bound covers them as well.
        """
        with self._wake:
            if not self._queue:
                return None
            head = self._queue[0]
            room = self.config.batch_size
            if len(head) <= room:
                return self._queue.popleft()
            part = FlowBatch(
                records=head.records[:room],
                receiver=head.receiver,
                dns=head.dns[:room] if head.dns is not None else None,
                endpoints=head.endpoints,
                attributes=head.attributes,
            )
            head.records = head.records[room:]
            if head.dns is not None:
                head.dns = head.dns[room:]
            return part

    def _export_logs(self, batch: FlowBatch) -> bool:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        assert self._host is not None
        try:
            result = self._log_exporter.export(flows_to_log_records(batch, self._resource))
        except Exception as exc:
            log.warning("%s: log export failed: %s", self.id, exc)
            result = LogRecordExportResult.FAILURE
        with self._wake:
            self._queued_records -= len(batch)
        if result is LogRecordExportResult.SUCCESS:
            self.exported_records += len(batch)
            return True
        self._host.count_lost("otlp_logs", "export_failed", len(batch))
        return False

    def _drop_queue(self, reason: str) -> None:
        with self._wake:
            dropped, self._queued_records = self._queued_records, 0
            self._queue.clear()
        if dropped and self._host is not None:
            self._host.count_lost("otlp_logs", reason, dropped)

    def _logs_loop(self) -> None:
        while True:
            with self._wake:
                if not self._stop.is_set() and self._queued_records < self.config.batch_size:
                    self._wake.wait(self.config.flush_interval)
            stopping = self._stop.is_set()
            while (batch := self._take()) is not None:
                if not self._export_logs(batch) and stopping:
                    # Shutting down with the endpoint failing: one timeout, not one per queued batch.
                    self._drop_queue("export_failed")
                if self._stop.is_set() and not stopping:
                    break  # flush what is left in the final round, with the rule above
            if stopping:
                return


def _create_grpc(settings: CreateSettings, config: OtlpConfig, _next: FlowConsumer | None) -> OtlpExporter:
    return OtlpExporter(settings, config, "grpc")


def _create_http(settings: CreateSettings, config: OtlpConfig, _next: FlowConsumer | None) -> OtlpExporter:
    return OtlpExporter(settings, config, "http/protobuf")


FACTORY: Factory[OtlpConfig] = Factory("otlp", "exporter", OtlpConfig, _create_grpc, "OTLP over gRPC")
HTTP_FACTORY: Factory[OtlpConfig] = Factory("otlphttp", "exporter", OtlpConfig, _create_http, "OTLP over HTTP/protobuf")
