"""``retina-otel observe``: flows from an agent's Observer API, like ``hubble observe``.

Connects to the node-local socket (default) or ``--server host:port`` (TLS with ``--tls``, client
certificates with ``--tls-client-cert-file``/``--tls-client-key-file``), sends one ``GetFlows`` built
from the filter flags (:mod:`.request`) and prints the answer (:mod:`.output`) or, with
``--group-by``, a table of totals per group (:mod:`.groupby`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TextIO

import grpc

from retina_otel.exporters.observer.config import DEFAULT_SOCKET
from retina_otel.hubble import observer_pb2
from retina_otel.hubble.api import ObserverStub
from retina_otel.observe.groupby import GroupBy, parse_fields
from retina_otel.observe.output import Printer
from retina_otel.observe.request import add_filter_arguments, build_request

__all__ = ["add_arguments", "connect", "main", "main_from_args", "run"]

ENV_SERVER = "RETINA_OTEL_OBSERVER"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--server",
        default=os.environ.get(ENV_SERVER, DEFAULT_SOCKET),
        help=f"unix:///path or host:port of an agent's Observer API (default: ${ENV_SERVER} or {DEFAULT_SOCKET})",
    )
    conn.add_argument("--tls", action="store_true", help="TLS to a host:port server")
    conn.add_argument("--tls-ca-cert-file", help="CA (PEM) that signs the server's certificate")
    conn.add_argument("--tls-client-cert-file", help="client certificate (PEM) for mTLS")
    conn.add_argument("--tls-client-key-file", help="client key (PEM) for mTLS")
    conn.add_argument("--tls-server-name", help="name to check the server's certificate against")
    conn.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")
    what = parser.add_argument_group("which flows")
    what.add_argument("--last", type=int, metavar="N", help="the N most recent matching flows (default 20)")
    what.add_argument("--first", type=int, metavar="N", help="the N oldest buffered matching flows")
    what.add_argument("-f", "--follow", action="store_true", help="keep printing new flows as they come")
    what.add_argument("--since", help="flows since a duration ago (30s, 5m) or an RFC 3339 time")
    what.add_argument("--until", help="flows until a duration ago or an RFC 3339 time")
    add_filter_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", choices=("compact", "json", "table"), default="compact")
    out.add_argument(
        "--group-by",
        metavar="FIELD[,FIELD]",
        help="packets, bytes and flows per group instead of flows (refreshed every second with --follow); "
        "fields: source_/destination_ namespace, pod, workload, ip, port; protocol, verdict, drop_reason, "
        "traffic_direction, type, node, dns_query",
    )
    parser.set_defaults(func=main_from_args)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def connect(args: argparse.Namespace) -> grpc.Channel:
    server = str(args.server)
    if server.startswith("unix:"):
        return grpc.insecure_channel(server)
    target = server.removeprefix("http://").removeprefix("https://")
    tls = (
        args.tls
        or server.startswith("https://")
        or any((args.tls_ca_cert_file, args.tls_client_cert_file, args.tls_client_key_file, args.tls_server_name))
    )
    if not tls:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca_cert_file),
        private_key=_read(args.tls_client_key_file),
        certificate_chain=_read(args.tls_client_cert_file),
    )
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def run(
    channel: grpc.Channel,
    request: observer_pb2.GetFlowsRequest,
    handle: Callable[[observer_pb2.GetFlowsResponse], None],
    *,
    tick: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
    timeout: float = 10.0,
) -> None:
    """Stream the request's answer into ``handle`` until it ends or ``stop`` is set."""
    grpc.channel_ready_future(channel).result(timeout=timeout)
    call = ObserverStub(channel).GetFlows(request)
    done = threading.Event()
    if stop is not None or tick is not None:

        def watch() -> None:
            while not done.wait(1.0):
                if stop is not None and stop.is_set():
                    call.cancel()
                    return
                if tick is not None:
                    tick()

        threading.Thread(target=watch, name="observe-watch", daemon=True).start()
    try:
        for response in call:
            handle(response)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            raise
    finally:
        done.set()


def main_from_args(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if args.first and args.follow:
        print("retina-otel observe: --first and --follow cannot be combined", file=err)
        return 2
    try:
        request = build_request(
            args.filter_flags, last=args.last, first=args.first, follow=args.follow, since=args.since, until=args.until
        )
        handler: Printer | GroupBy
        if args.group_by:
            handler = GroupBy(parse_fields(args.group_by), out, err, args.follow)
        else:
            handler = Printer(args.output, out, err, args.follow)
    except ValueError as exc:
        print(f"retina-otel observe: {exc}", file=err)
        return 2
    problem = _socket_problem(str(args.server))
    if problem:
        print(f"retina-otel observe: {problem}", file=err)
        return 1
    channel = connect(args)
    try:
        run(channel, request, handler, tick=getattr(handler, "tick", None), timeout=args.timeout)
    except grpc.FutureTimeoutError:
        print(f"retina-otel observe: no Observer API at {args.server} (is the agent's observer exporter on?)", file=err)
        return 1
    except grpc.RpcError as exc:
        print(f"retina-otel observe: {exc.code().name}: {exc.details()}", file=err)
        return 2 if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    except KeyboardInterrupt:
        pass
    finally:
        channel.close()
    handler.finish()
    return 0


def _socket_problem(server: str) -> str:
    """Why a unix socket cannot be used, said plainly (gRPC would only time out)."""
    if not server.startswith("unix:"):
        return ""
    path = server.removeprefix("unix://").removeprefix("unix:")
    if not os.path.exists(path):
        return f"no socket at {path} (is the agent running with the observer exporter? see docs/observe.md)"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"permission denied on {path}: the socket is root-only by default (exporters.observer.socket_mode)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retina-otel observe", description=__doc__)
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
