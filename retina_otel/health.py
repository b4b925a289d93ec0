"""``/healthz`` (live) and ``/readyz`` (ready) on the telemetry endpoint (default ``:18081``).

``/readyz`` answers 200 once no component is still starting (every receiver attached, k8s caches
synced), else 503; its JSON body lists each component's status and why one failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from retina_otel.endpoints import parse_endpoint
from retina_otel.httpserve import HttpServer, send_body

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)

ReadinessProbe = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    def __init__(self, endpoint: str, readiness: ReadinessProbe) -> None:
        self._endpoint = endpoint
        self._readiness = readiness
        self._http = HttpServer("health-http", _handler_class(readiness))

    @property
    def address(self) -> tuple[str, int]:
        return self._http.address

    def start(self) -> None:
        host, port = parse_endpoint(self._endpoint, field="service.telemetry.health.endpoint")
        self._http.start(host, port)

    def shutdown(self) -> None:
        self._http.shutdown()


def _handler_class(readiness: ReadinessProbe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict[str, object]) -> None:
            send_body(self, code, "application/json", json.dumps(body, indent=1).encode())

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/livez"):
                self._reply(200, {"status": "ok"})
            elif path == "/readyz":
                ready, detail = readiness()
                self._reply(200 if ready else 503, detail)
            else:
                self._reply(404, {"error": "try /healthz or /readyz"})

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health: " + format, *args)

    return Handler
