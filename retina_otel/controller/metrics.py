"""The operator's own metrics, through the OpenTelemetry SDK and its Prometheus reader.

Unlike the agent's ``:10093`` (rendered by hand, because Retina's dashboards fix every name, label and
type there and the scrape must stay cheap at 50,000 series), nothing constrains these few series, so
they are made the standard way: OTel instruments, ``PrometheusMetricReader`` on a registry of this
operator run (not the process-global one: tests run several operators), served by prometheus_client.

Series (OTel names; the reader adds ``_total`` to counters):

* ``retina_operator_reconciles_total{kind, result}``: handler runs per CR kind (Capture,
  MetricsConfiguration, TracesConfiguration, RetinaEndpoint) and result (ok, failed, api_error);
* ``retina_operator_capture_jobs_created_total``: capture Jobs the operator created;
* ``retina_operator_captures{phase}``: Captures this operator knows by phase (pending, running,
  completed, failed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Literal

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from retina_otel.endpoints import parse_endpoint

__all__ = ["PHASES", "OperatorMetrics", "Phase", "capture_phase"]

Phase = Literal["pending", "running", "completed", "failed"]
PHASES: tuple[Phase, ...] = ("pending", "running", "completed", "failed")


def capture_phase(status: dict[str, Any]) -> Phase:
    """A Capture's phase from its status (the counts of its Jobs and its conditions)."""
    if status.get("active"):
        return "running"
    if status.get("failed"):
        return "failed"
    if any(c.get("type") == "error" and c.get("status") == "True" for c in status.get("conditions") or ()):
        return "failed"  # not started (no target, bad secret, ...) or a Job failed
    if status.get("succeeded"):
        return "completed"
    return "pending"


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        self._provider = MeterProvider(
            metric_readers=[self._reader], resource=Resource.create({"service.name": "retina-otel-operator"})
        )
        meter = self._provider.get_meter("retina_otel.operator")
        self._reconciles = meter.create_counter("retina_operator_reconciles", description="handler runs by CR kind")
        self._jobs = meter.create_counter(
            "retina_operator_capture_jobs_created", description="capture Jobs the operator created"
        )
        meter.create_observable_gauge(
            "retina_operator_captures", callbacks=[self._observe_phases], description="Captures by phase"
        )
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], Phase] = {}
        self._server: Any = None

    @classmethod
    def disabled(cls) -> OperatorMetrics:
        """Counts kept but never served (an operator run without a metrics endpoint)."""
        return cls()

    def reconciled(self, kind: str, result: Literal["ok", "failed", "api_error"] = "ok") -> None:
        self._reconciles.add(1, {"kind": kind, "result": result})

    def jobs_created(self, count: int) -> None:
        if count:
            self._jobs.add(count)

    def capture_status(self, namespace: str, name: str, status: dict[str, Any] | None) -> None:
        """Record a Capture's latest status (``None``: the Capture is gone)."""
        with self._lock:
            if status is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = capture_phase(status)

    def _observe_phases(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            phases = list(self._phases.values())
        return [Observation(phases.count(phase), {"phase": phase}) for phase in PHASES]

    def serve(self, endpoint: str) -> None:
        """Serve ``/metrics`` on ``host:port`` (a thread of prometheus_client's)."""
        host, port = parse_endpoint(endpoint)
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._provider.shutdown()
