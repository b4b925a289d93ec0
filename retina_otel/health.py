"""``/healthz`` (live) and ``/readyz`` (ready) on the telemetry endpoint (default ``:18081``).

``/readyz`` answers 200 once no component is still starting (every receiver attached, k8s caches
synced), else 503; its JSON body lists each component's status and why one failed.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from retina_otel.endpoints import parse_endpoint

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)

ReadinessProbe = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    def __init__(self, endpoint: str, readiness: ReadinessProbe) -> None:
        self._endpoint = endpoint
        self._readiness = readiness
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        host, port = parse_endpoint(self._endpoint, field="service.telemetry.health.endpoint")
        readiness = self._readiness

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict[str, object]) -> None:
                data = json.dumps(body, indent=1).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
