"""Settings of the ``observer`` exporter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from retina_otel.component import ComponentConfig
from retina_otel.endpoints import parse_endpoint
from retina_otel.exporters.observer.ring import bytes_per_record

__all__ = ["ObserverConfig", "ObserverTlsConfig"]

DEFAULT_SOCKET = "unix:///var/run/retina-otel/observer.sock"


class ObserverTlsConfig(ComponentConfig):
    cert_file: str = Field("", description="server certificate (PEM) of the TCP listener")
    key_file: str = Field("", description="private key (PEM) of cert_file")
    client_ca_file: str = Field(
        "", description="CA (PEM) that signs client certificates; when set, clients must present one (mTLS)"
    )
    insecure: bool = Field(
        False, description="serve the TCP listener without TLS (only behind another protection, e.g. a port-forward)"
    )


class ObserverConfig(ComponentConfig):
    buffer_size: int = Field(
        4096,
        ge=1,
        le=16_777_216,
        description=f"flow records kept for clients (the most recent ones); {bytes_per_record()} bytes each",
    )
    socket: str = Field(DEFAULT_SOCKET, description="unix:///path of the node-local gRPC socket; empty disables it")
    socket_mode: str = Field("0600", description="permission bits of the socket file (octal)")
    tcp_endpoint: str = Field(
        "",
        description="host:port (or :port) of a TCP listener, Hubble's port is :4244; empty (default) = no TCP. "
        "Needs tls.cert_file and tls.key_file unless tls.insecure",
    )
    tls: ObserverTlsConfig = Field(ObserverTlsConfig(), description="TLS of the TCP listener")
    max_clients: int = Field(16, ge=1, le=1024, description="concurrent API calls; more are refused")
    event_records: Literal["while_following", "always"] = Field(
        "while_following",
        description="when packetparser (report_rule: auto) writes a record per connection event for this "
        "buffer. while_following: only while a client follows live flows (observe --follow, Hubble UI); "
        "otherwise one per connection close and report interval, so history (observe --last) holds coarser "
        "records, with the same counts. always: Retina's rule all the time (every event in the history, at "
        "the cost of the records nobody reads). Default: while_following",
    )

    @field_validator("socket")
    @classmethod
    def _unix_url(cls, value: str) -> str:
        if value and (not value.startswith("unix:///") or len(value) <= len("unix:///")):
            raise ValueError("must be unix:///absolute/path (or empty to disable the socket)")
        return value

    @field_validator("socket_mode")
    @classmethod
    def _octal(cls, value: str) -> str:
        try:
            bits = int(value, 8)
        except ValueError as exc:
            raise ValueError("must be octal permission bits such as 0600") from exc
        if not 0 <= bits <= 0o777:
            raise ValueError("must be between 0000 and 0777")
        return value

    @field_validator("tcp_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value:
            parse_endpoint(value)
        return value

    @model_validator(mode="after")
    def _tls_for_tcp(self) -> ObserverConfig:
        tls = self.tls
        if self.tcp_endpoint and not tls.insecure and not (tls.cert_file and tls.key_file):
            raise ValueError("tcp_endpoint needs tls.cert_file and tls.key_file (or tls.insecure: true)")
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ValueError("tls.cert_file and tls.key_file go together")
        if not self.socket and not self.tcp_endpoint:
            raise ValueError("socket and tcp_endpoint are both empty: the API would have no listener")
        return self

    @property
    def socket_mode_bits(self) -> int:
        return int(self.socket_mode, 8)
