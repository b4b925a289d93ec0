"""One small HTTP server: a threaded ``http.server`` on ``host:port`` (IPv6 when the host has a ``:``),
served by a daemon thread, for the agent's few plain endpoints (``/healthz``/``/readyz``, the Prometheus
exporters' ``/metrics``).

Each request runs in a thread of its own (daemon threads, so a slow client never holds up shutdown);
the port may be reused right after a restart. :func:`send_body` writes one complete reply.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HttpServer", "send_body"]


def send_body(
    handler: BaseHTTPRequestHandler, code: int, content_type: str, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """Reply ``code`` with ``body`` (its type and length set, plus ``headers``)."""
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpServer:
    """Serves ``handler`` on ``host:port`` from :meth:`start` until :meth:`shutdown` (thread ``name``)."""

    def __init__(self, name: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.name = name
        self._handler = handler
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (useful with port 0)."""
        assert self._server is not None, f"{self.name}: not serving"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self, host: str, port: int) -> None:
        """Bind (``OSError`` when the address is taken) and serve in a daemon thread."""
        server_cls = _Server6 if ":" in host else _Server
        self._server = server_cls((host, port), self._handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
