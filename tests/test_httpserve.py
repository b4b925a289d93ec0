"""The shared HTTP server helper: serves on IPv4 and IPv6, replies with type and length, frees its port."""

from __future__ import annotations

import urllib.request
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from retina_otel.httpserve import HttpServer, send_body


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        send_body(self, 200, "text/plain", b"hello " + self.path.encode(), {"X-Test": "1"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_serves_and_frees_the_port(host: str) -> None:
    server = HttpServer("test-http", _Hello)
    assert not server.running
    server.start(host, 0)
    try:
        bound_host, port = server.address
        assert bound_host == host and port > 0
        url_host = f"[{host}]" if ":" in host else host
        with urllib.request.urlopen(f"http://{url_host}:{port}/x", timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "text/plain"
            assert reply.headers["Content-Length"] == str(len(b"hello /x"))
            assert reply.headers["X-Test"] == "1"
            assert reply.read() == b"hello /x"
    finally:
        server.shutdown()
    assert not server.running
    server.shutdown()  # twice is fine
    again = HttpServer("test-http-again", _Hello)
    again.start(host, port)  # the same port right away
    again.shutdown()
