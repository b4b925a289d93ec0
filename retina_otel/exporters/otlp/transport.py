"""Sending encoded OTLP requests: gRPC (a generic unary call) or HTTP/protobuf (a POST).

The request bytes come from the columnar encoders (:mod:`.logwire`, :mod:`.spanwire`); this module only
moves them, with the exporter's settings resolved the way the SDK's OTLP exporters resolve theirs: the
config first, then ``OTEL_EXPORTER_OTLP_<SIGNAL>_*``, then ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers,
compression, certificates, insecure). Retryable failures (gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, ...;
HTTP 429/502/503/504 and connection errors) are retried with exponential backoff (1 s, 2 s, 4 s ...,
+-20% jitter; a server's Retry-After is honoured) while the export's ``timeout`` allows. A response with
``partial_success`` reports how many records the collector rejected.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retina_otel.exporters.otlp.exporter import OtlpConfig

__all__ = ["ExportError", "Sender", "make_sender", "parse_partial_success"]

log = logging.getLogger(__name__)

_SERVICES = {
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
}
_HTTP_PATHS = {"logs": "/v1/logs", "traces": "/v1/traces"}
_HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
_MAX_ATTEMPTS = 6


class ExportError(Exception):
    """The collector did not take the request (after retries where the failure was retryable)."""


def parse_partial_success(body: bytes) -> tuple[int, str]:
    """``(rejected, error_message)`` of an ``Export*ServiceResponse`` (field 1 ``partial_success``:
    field 1 the rejected count, field 2 the message); (0, "") when absent."""
    fields = _fields(body)
    partial = fields.get(1)
    if not isinstance(partial, bytes):
        return 0, ""
    inner = _fields(partial)
    rejected = inner.get(1, 0)
    message = inner.get(2, b"")
    text = message.decode(errors="replace") if isinstance(message, bytes) else ""
    return (rejected if isinstance(rejected, int) else 0), text


def _fields(data: bytes) -> dict[int, int | bytes]:
    """The last value of each varint or length-delimited field of a message (others skipped)."""
    out: dict[int, int | bytes] = {}
    pos = 0

    def read_varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    try:
        while pos < len(data):
            key = read_varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                out[number] = read_varint()
            elif wire == 2:
                size = read_varint()
                out[number] = data[pos : pos + size]
                pos += size
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                break
    except IndexError:
        pass
    return out


def _env(signal: str, name: str) -> str | None:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")


def _env_headers(signal: str) -> dict[str, str]:
    raw = _env(signal, "HEADERS") or ""
    out = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[urllib.parse.unquote(key.strip()).lower()] = urllib.parse.unquote(value.strip())
    return out


@dataclass(frozen=True)
class _Settings:
    headers: dict[str, str]
    gzip: bool
    timeout: float
    ca_file: str | None
    cert_file: str | None
    key_file: str | None


def _settings(config: OtlpConfig, signal: str) -> _Settings:
    compression = config.compression or (_env(signal, "COMPRESSION") or "none").strip().lower()
    if compression not in ("gzip", "none"):
        raise ValueError(f"unsupported OTLP compression {compression!r} (gzip or none)")
    tls = config.tls
    explicit = tls.ca_file or tls.cert_file
    return _Settings(
        headers=dict(config.headers) or _env_headers(signal),
        gzip=compression == "gzip",
        timeout=config.timeout,
        ca_file=tls.ca_file if explicit else _env(signal, "CERTIFICATE"),
        cert_file=tls.cert_file if explicit else _env(signal, "CLIENT_CERTIFICATE"),
        key_file=tls.key_file if explicit else _env(signal, "CLIENT_KEY"),
    )


def _backoff(attempt: int) -> float:
    return float(2**attempt * random.uniform(0.8, 1.2))


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One try: ``error`` None on success (``rejected`` records refused by the collector); otherwise
    whether it may be retried and after how long the server asked for (None: our backoff)."""

    rejected: int = 0
    note: str = ""
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


class Sender:
    """Sends one signal's serialized requests to one collector; :meth:`send` returns the count of records
    the collector rejected (partial success) or raises :class:`ExportError`."""

    def __init__(self, settings: _Settings, stop: threading.Event) -> None:
        self.settings = settings
        self._stop = stop

    def send(self, payload: bytes) -> int:
        deadline = time.monotonic() + self.settings.timeout
        attempt = 0
        while True:
            outcome = self._attempt(payload, deadline)
            if outcome.error is None:
                if outcome.rejected:
                    log.warning("otlp collector rejected %d records: %s", outcome.rejected, outcome.note)
                return outcome.rejected
            wait = _backoff(attempt) if outcome.retry_after is None else outcome.retry_after
            attempt += 1
            if not outcome.retryable or attempt >= _MAX_ATTEMPTS or wait > deadline - time.monotonic():
                raise ExportError(outcome.error)
            log.debug("otlp export failed (%s), retrying in %.1f s", outcome.error, wait)
            if self._stop.wait(wait):
                raise ExportError(f"{outcome.error} (shutting down)")

    def _attempt(self, payload: bytes, deadline: float) -> _Outcome:
        raise NotImplementedError

    def close(self) -> None:
        pass


class GrpcSender(Sender):
    def __init__(self, config: OtlpConfig, signal: str, stop: threading.Event) -> None:
        import grpc

        super().__init__(_settings(config, signal), stop)
        endpoint = config.endpoint or _env(signal, "ENDPOINT") or "http://localhost:4317"
        parsed = urllib.parse.urlparse(endpoint)
        insecure = config.tls.insecure
        if insecure is None and os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_INSECURE") is not None:
            insecure = os.environ[f"OTEL_EXPORTER_OTLP_{signal.upper()}_INSECURE"].lower() == "true"
        if parsed.scheme == "https":
            insecure = False
        if insecure is None:
            env = os.environ.get("OTEL_EXPORTER_OTLP_INSECURE")
            insecure = env.lower() == "true" if env is not None else parsed.scheme == "http"
        target = parsed.netloc or endpoint
        s = self.settings
        if insecure:
            self._channel = grpc.insecure_channel(target)
        else:

            def read(path: str | None) -> bytes | None:
                if not path:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            credentials = grpc.ssl_channel_credentials(read(s.ca_file), read(s.key_file), read(s.cert_file))
            self._channel = grpc.secure_channel(target, credentials)
        self._call: Any = self._channel.unary_unary(_SERVICES[signal])
        self._metadata = tuple((k.lower(), v) for k, v in s.headers.items())
        self._compression = grpc.Compression.Gzip if s.gzip else grpc.Compression.NoCompression
        self._retryable = frozenset(
            {
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.ABORTED,
                grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DATA_LOSS,
            }
        )

    def _attempt(self, payload: bytes, deadline: float) -> _Outcome:
        import grpc

        try:
            response = self._call(
                payload,
                timeout=max(deadline - time.monotonic(), 0.001),
                metadata=self._metadata or None,
                compression=self._compression,
            )
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            details = error.details() if hasattr(error, "details") else error
            message = f"gRPC {code.name if code else 'error'}: {details}"
            return _Outcome(error=message, retryable=code in self._retryable)
        return _accepted(response)

    def close(self) -> None:
        self._channel.close()


class HttpSender(Sender):
    def __init__(self, config: OtlpConfig, signal: str, stop: threading.Event) -> None:
        import requests

        super().__init__(_settings(config, signal), stop)
        if config.endpoint is not None:
            base = config.endpoint if "://" in config.endpoint else f"http://{config.endpoint}"
            self.url = base.rstrip("/") + _HTTP_PATHS[signal]
        elif signal_endpoint := os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"):
            self.url = signal_endpoint
        else:
            base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
            self.url = base.rstrip("/") + _HTTP_PATHS[signal]
        s = self.settings
        self._session = requests.Session()
        self._headers = {"Content-Type": "application/x-protobuf", **s.headers}
        if s.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._verify: str | bool = s.ca_file or True
        self._cert = (s.cert_file, s.key_file) if s.cert_file and s.key_file else s.cert_file

    def _attempt(self, payload: bytes, deadline: float) -> _Outcome:
        import requests

        body = gzip.compress(payload) if self.settings.gzip else payload
        try:
            response = self._session.post(
                self.url,
                data=body,
                headers=self._headers,
                timeout=max(deadline - time.monotonic(), 0.001),
                verify=self._verify,
                cert=self._cert,
            )
        except requests.exceptions.SSLError as error:
            return _Outcome(error=f"HTTP TLS error: {error}")
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            return _Outcome(error=f"HTTP connection error: {error}", retryable=True)
        if 200 <= response.status_code < 300:
            return _accepted(response.content)
        after = response.headers.get("Retry-After", "")
        return _Outcome(
            error=f"HTTP {response.status_code}",
            retryable=response.status_code in _HTTP_RETRYABLE,
            retry_after=float(after) if after.isdigit() else None,
        )

    def close(self) -> None:
        self._session.close()


def _accepted(body: bytes) -> _Outcome:
    rejected, note = parse_partial_success(body)
    return _Outcome(rejected=rejected, note=note)


def make_sender(config: OtlpConfig, protocol: str, signal: str, stop: threading.Event) -> Sender:
    if protocol == "grpc":
        return GrpcSender(config, signal, stop)
    return HttpSender(config, signal, stop)
