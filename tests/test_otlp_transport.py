"""Flow logs sent by the exporter's own transport to real receiving ends: a gRPC LogsService built from
opentelemetry-proto (retries, partial success, gzip, headers, mTLS) and an HTTP server (/v1/logs,
gzip, retry on 503, partial success, no retry on 400)."""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import ipaddress
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from retina_otel.component import CreateSettings
from retina_otel.exporters.otlp import OtlpConfig, OtlpExporter
from retina_otel.exporters.otlp.transport import parse_partial_success
from retina_otel.receivers.synthetic import make_batch
from retina_otel.testing import TestHost, wait_for


def _response(rejected: int) -> bytes:
    partial = logs_service_pb2.ExportLogsPartialSuccess(rejected_log_records=rejected, error_message="too old")
    message = logs_service_pb2.ExportLogsServiceResponse(partial_success=partial if rejected else None)
    return bytes(message.SerializeToString())


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, *, unavailable: int = 0, rejected: int = 0, invalid: bool = False) -> None:
        self.unavailable = unavailable
        self.invalid = invalid
        self.rejected = rejected
        self.requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.metadata: list[dict[str, Any]] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        if self.invalid:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")
        if self.unavailable:
            self.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        self.requests.append(request)
        return logs_service_pb2.ExportLogsServiceResponse.FromString(_response(self.rejected))

    def records(self) -> int:
        return sum(len(sl.log_records) for r in self.requests for rl in r.resource_logs for sl in rl.scope_logs)


@pytest.fixture
def grpc_logs(request: pytest.FixtureRequest) -> Iterator[tuple[_Logs, int]]:
    servicer = _Logs(**getattr(request, "param", {}))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None).wait()


def _lost(host: TestHost) -> dict[tuple[str, ...], float]:
    for family in host.metrics.collect():
        if family.name.endswith("lost_events_counter"):
            return {labels: float(value) for labels, value, _ in family.series}  # type: ignore[arg-type]
    return {}


def _send(config: OtlpConfig, protocol: str, rows: int, done: Any) -> TestHost:
    host = TestHost()
    exporter = OtlpExporter(CreateSettings("otlp", "exporter"), config, protocol)
    exporter.start(host)
    try:
        exporter.consume_flows(make_batch(rows))
        assert wait_for(done, timeout=15)
        assert wait_for(lambda: exporter.queued_records == 0, timeout=15)
    finally:
        exporter.shutdown()
    return host


def _grpc_config(port: int, **kwargs: Any) -> OtlpConfig:
    settings: dict[str, Any] = {"endpoint": f"127.0.0.1:{port}", "tls": {"insecure": True}, "flush_interval": 0.05}
    settings.update(signals=["logs"], **kwargs)
    return OtlpConfig(**settings)


@pytest.mark.parametrize("grpc_logs", [{"unavailable": 1}], indirect=True)
def test_grpc_retries_unavailable_then_delivers(grpc_logs: tuple[_Logs, int]) -> None:
    servicer, port = grpc_logs
    host = _send(_grpc_config(port), "grpc", 30, lambda: servicer.records() == 30)
    assert len(servicer.metadata) == 2  # one refused, one taken
    assert not _lost(host)


@pytest.mark.parametrize("grpc_logs", [{"rejected": 3}], indirect=True)
def test_grpc_partial_success_counts_rejected_records_as_lost(grpc_logs: tuple[_Logs, int]) -> None:
    servicer, port = grpc_logs
    host = _send(_grpc_config(port), "grpc", 20, lambda: servicer.records() == 20)
    assert _lost(host) == {("otlp_logs", "export_rejected"): 3.0}


def test_grpc_gzip_and_headers(grpc_logs: tuple[_Logs, int]) -> None:
    servicer, port = grpc_logs
    config = _grpc_config(port, compression="gzip", headers={"X-Tenant": "t1"})
    _send(config, "grpc", 25, lambda: servicer.records() == 25)
    assert servicer.metadata[0]["x-tenant"] == "t1"


@pytest.mark.parametrize("grpc_logs", [{"invalid": True}], indirect=True)
def test_grpc_non_retryable_error_is_one_failed_export(grpc_logs: tuple[_Logs, int]) -> None:
    servicer, port = grpc_logs
    host = TestHost()
    exporter = OtlpExporter(CreateSettings("otlp", "exporter"), _grpc_config(port), "grpc")
    exporter.start(host)
    try:
        exporter.consume_flows(make_batch(9))
        assert wait_for(lambda: _lost(host).get(("otlp_logs", "export_failed")) == 9.0, timeout=15)
    finally:
        exporter.shutdown()
    assert len(servicer.metadata) == 1


# -- TLS --------------------------------------------------------------------------------------------


def _pki(tmp: Path) -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otlp-test-ca")])
    out: dict[str, bytes] = {}

    def sign(subject: x509.Name, key: Any, issuer_key: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    out["ca.crt"] = sign(ca_name, ca_key, ca_key, ca=True).public_bytes(serialization.Encoding.PEM)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = sign(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key, ca_key, ca=False)
        out[f"{name}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        out[f"{name}.key"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    for name, data in out.items():
        (tmp / name).write_bytes(data)
    return out


@pytest.mark.parametrize("client_cert", [True, False])
def test_grpc_mtls(tmp_path: Path, client_cert: bool) -> None:
    pki = _pki(tmp_path)
    servicer = _Logs()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(pki["server.key"], pki["server.crt"])], root_certificates=pki["ca.crt"], require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        tls: dict[str, Any] = {"ca_file": str(tmp_path / "ca.crt")}
        if client_cert:
            tls.update(cert_file=str(tmp_path / "client.crt"), key_file=str(tmp_path / "client.key"))
        config = OtlpConfig(
            endpoint=f"https://127.0.0.1:{port}", tls=tls, flush_interval=0.05, timeout=1.5, signals=["logs"]
        )
        host = TestHost()
        exporter = OtlpExporter(CreateSettings("otlp", "exporter"), config, "grpc")
        exporter.start(host)
        try:
            exporter.consume_flows(make_batch(10))
            if client_cert:
                assert wait_for(lambda: servicer.records() == 10, timeout=15)
            else:
                assert wait_for(lambda: _lost(host).get(("otlp_logs", "export_failed")) == 10.0, timeout=15)
        finally:
            exporter.shutdown()
        assert servicer.records() == (10 if client_cert else 0)
    finally:
        server.stop(grace=None).wait()


# -- HTTP -------------------------------------------------------------------------------------------


class _HttpLogs(http.server.BaseHTTPRequestHandler):
    script: list[int] = []  # status codes to answer with, in order, then 200
    rejected = 0
    seen: list[tuple[str, dict[str, str], logs_service_pb2.ExportLogsServiceRequest | None]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status = self.script.pop(0) if self.script else 200
        request = None
        if status == 200:
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        self.seen.append((self.path, headers, request))
        payload = _response(self.rejected) if status == 200 else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_logs() -> Iterator[int]:
    _HttpLogs.script, _HttpLogs.rejected, _HttpLogs.seen = [], 0, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HttpLogs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _http_records() -> int:
    return sum(len(sl.log_records) for _, _, r in _HttpLogs.seen if r for rl in r.resource_logs for sl in rl.scope_logs)


def test_http_gzip_headers_retry_and_partial_success(http_logs: int) -> None:
    _HttpLogs.script, _HttpLogs.rejected = [503], 2
    config = OtlpConfig(
        endpoint=f"http://127.0.0.1:{http_logs}/",
        compression="gzip",
        headers={"Authorization": "Bearer t"},
        flush_interval=0.05,
        signals=["logs"],
    )
    host = _send(config, "http/protobuf", 40, lambda: _http_records() == 40)
    assert [path for path, _, _ in _HttpLogs.seen] == ["/v1/logs", "/v1/logs"]
    headers = _HttpLogs.seen[1][1]
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-encoding"] == "gzip"
    assert headers["authorization"] == "Bearer t"
    assert _lost(host) == {("otlp_logs", "export_rejected"): 2.0}


def test_http_client_error_is_not_retried(http_logs: int) -> None:
    _HttpLogs.script = [400]
    config = OtlpConfig(endpoint=f"127.0.0.1:{http_logs}", flush_interval=0.05, signals=["logs"])
    host = TestHost()
    exporter = OtlpExporter(CreateSettings("otlphttp", "exporter"), config, "http/protobuf")
    exporter.start(host)
    try:
        exporter.consume_flows(make_batch(7))
        assert wait_for(lambda: _lost(host).get(("otlp_logs", "export_failed")) == 7.0, timeout=15)
    finally:
        exporter.shutdown()
    assert len(_HttpLogs.seen) == 1


def test_partial_success_parsing() -> None:
    assert parse_partial_success(b"") == (0, "")
    assert parse_partial_success(_response(5)) == (5, "too old")
    assert parse_partial_success(b"\x0a\xff") == (0, "")  # truncated: nothing


def test_settings_from_the_environment(grpc_logs: tuple[_Logs, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset config keys come from OTEL_EXPORTER_OTLP_LOGS_*, then OTEL_EXPORTER_OTLP_* (as the SDK reads them)."""
    servicer, port = grpc_logs
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # the signal's own wins
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"http://127.0.0.1:{port}")  # http: plaintext
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=t%202,x-other=o")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    _send(OtlpConfig(flush_interval=0.05, signals=["logs"]), "grpc", 5, lambda: servicer.records() == 5)
    assert servicer.metadata[0]["x-tenant"] == "t 2" and servicer.metadata[0]["x-other"] == "o"


def test_http_endpoint_from_the_environment(http_logs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{http_logs}")
    _send(OtlpConfig(flush_interval=0.05, signals=["logs"]), "http/protobuf", 5, lambda: _http_records() == 5)
    assert _HttpLogs.seen[0][0] == "/v1/logs"
