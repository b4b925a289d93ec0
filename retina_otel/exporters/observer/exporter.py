"""The ``observer`` exporter: keeps the most recent flow records and serves them over Hubble's
Observer API (``retina-otel observe``, ``hubble observe``, any client of Hubble's protobufs).

Taking a batch is one copy into the ring (:mod:`.ring`); everything per record (filters, conversion
to ``flow.Flow``) happens on the gRPC server's threads, only for records a client asked for. The
exporter reads batches and never changes them.

Listeners: a unix socket (default ``/var/run/retina-otel/observer.sock``, mode 0600: only root, or
whoever the mode admits, can read flows) and, when configured, a TCP endpoint (Hubble's port is
4244), with TLS and optional client certificates (mTLS) unless ``tls.insecure`` is set explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from concurrent import futures
from pathlib import Path

import grpc

from retina_otel.component import CreateSettings, FlowConsumer, Host
from retina_otel.exporters.observer.config import ObserverConfig
from retina_otel.exporters.observer.ring import FlowRing
from retina_otel.exporters.observer.service import ObserverService
from retina_otel.flows import FlowBatch
from retina_otel.hubble.api import generic_handler

__all__ = ["ObserverExporter"]

log = logging.getLogger(__name__)

BUFFER_BYTES = "controlplane_networkobservability_observer_buffer_bytes"
BUFFER_RECORDS = "controlplane_networkobservability_observer_buffer_records"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _unix_path(address: str) -> str:
    return address.removeprefix("unix://")


class ObserverExporter:
    def __init__(self, settings: CreateSettings, config: ObserverConfig) -> None:
        self.id = settings.id
        self.config = config
        self._event_demand = settings.event_demand  # held while a client follows live flows
        self.ring = FlowRing(config.buffer_size)
        self.service: ObserverService | None = None
        self._server: grpc.Server | None = None
        self._socket_path: str | None = None
        self.tcp_port: int | None = None

    # -- the pipeline side -----------------------------------------------------------------------------

    def consume_flows(self, batch: FlowBatch) -> None:
        self.ring.write(batch)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, host: Host) -> None:
        if self._server is not None:
            return
        cfg = self.config
        buffer_bytes = host.metrics.gauge(BUFFER_BYTES, "Memory held by the observer's flow buffer", unit="By")
        buffer_bytes.set((), float(self.ring.nbytes))
        records = host.metrics.gauge(BUFFER_RECORDS, "Flow records held by the observer's flow buffer")
        host.metrics.add_collect_hook(lambda: records.set((), float(len(self.ring))))
        service = ObserverService(
            self.ring,
            host.node_name,
            lambda n: host.count_lost("observer", "client_too_slow", n),
            address=cfg.tcp_endpoint,
            tls=bool(cfg.tcp_endpoint) and not cfg.tls.insecure,
            event_demand=self._event_demand,
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_clients, thread_name_prefix=f"{self.id}-grpc"),
            maximum_concurrent_rpcs=cfg.max_clients,
        )
        server.add_generic_rpc_handlers((generic_handler(service.get_flows, service.get_nodes, service.server_status),))
        try:
            if cfg.socket:
                self._bind_unix(server, _unix_path(cfg.socket))
            if cfg.tcp_endpoint:
                self._bind_tcp(server)
        except BaseException:
            server.stop(None)
            self._remove_socket()
            raise
        server.start()
        self._server, self.service = server, service
        log.info(
            "%s: Observer API on %s (buffer %d records, %d bytes)",
            self.id,
            ", ".join(a for a in (cfg.socket, cfg.tcp_endpoint and f"tcp {cfg.tcp_endpoint}") if a),
            self.ring.capacity,
            self.ring.nbytes,
        )

    def _bind_unix(self, server: grpc.Server, path: str) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if target.exists() or target.is_symlink():
            if not stat.S_ISSOCK(target.lstat().st_mode):
                raise RuntimeError(f"socket: {path} exists and is not a socket")
            if _socket_answers(path):
                raise RuntimeError(f"socket: {path} is in use (another agent on this host?)")
            target.unlink()
        # Created with no permissions for group and others, then set to the configured mode: the socket
        # is never reachable more widely than configured, not even between bind and chmod.
        old = os.umask(0o177)
        try:
            bound = server.add_insecure_port(f"unix://{path}")
        finally:
            os.umask(old)
        if not bound:
            raise RuntimeError(f"socket: cannot listen on {path}")
        self._socket_path = path
        os.chmod(path, self.config.socket_mode_bits)

    def _bind_tcp(self, server: grpc.Server) -> None:
        cfg = self.config
        endpoint = cfg.tcp_endpoint
        address = f"[::]{endpoint}" if endpoint.startswith(":") else endpoint
        if cfg.tls.insecure:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(_read(cfg.tls.key_file), _read(cfg.tls.cert_file))],
                root_certificates=_read(cfg.tls.client_ca_file) if cfg.tls.client_ca_file else None,
                require_client_auth=bool(cfg.tls.client_ca_file),
            )
            port = server.add_secure_port(address, credentials)
        if not port:
            raise RuntimeError(f"tcp_endpoint: cannot listen on {endpoint}")
        self.tcp_port = port

    def _remove_socket(self) -> None:
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket_path)
            self._socket_path = None

    def shutdown(self) -> None:
        server, self._server = self._server, None
        if self.service is not None:
            self.service.stopping.set()
            self.ring.wake_all()
        if server is not None:
            server.stop(grace=1.0).wait(5)
        self._remove_socket()


def _socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def create(settings: CreateSettings, config: ObserverConfig, _next: FlowConsumer | None) -> ObserverExporter:
    return ObserverExporter(settings, config)
