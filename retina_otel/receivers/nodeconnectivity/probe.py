"""HTTP probes of other agents' health endpoints, many at once from one thread.

Each probe opens a TCP connection to ``address:port``, sends ``GET <path> HTTP/1.0`` and reads the
status line; it succeeds on a ``200``. Its latency is the time from ``connect()`` to the first bytes of
the response: the TCP handshake plus one request/response round trip through both nodes' stacks (what
Cilium's HTTP health probe measures too). The response is read to its end (HTTP/1.0: the server closes)
within the timeout. At most ``concurrency`` probes are in flight; each has its
own ``timeout``. Non-blocking sockets in one ``selectors`` loop: no thread per probe.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["ProbeResult", "probe_all"]

_MAX_RESPONSE = 16384  # a health reply is a few hundred bytes; more than this is not an agent


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: str
    ok: bool
    seconds: float  # connect -> first response bytes; the time spent when not ok
    error: str = ""


@dataclass
class _Probe:
    target: str
    address: str
    sock: socket.socket
    started: float
    deadline: float
    request: bytes
    received: bytearray = field(default_factory=bytearray)
    sent: bool = False
    first_byte: float = 0.0


def _open(target: str, address: str, port: int, request: bytes, timeout: float) -> _Probe | ProbeResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    started = time.perf_counter()
    code = sock.connect_ex((address, port))
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        return ProbeResult(target, False, time.perf_counter() - started, errno.errorcode.get(code, str(code)))
    return _Probe(target, address, sock, started, started + timeout, request)


def probe_all(
    targets: Sequence[tuple[str, str]],
    *,
    port: int,
    path: str = "/healthz",
    timeout: float = 1.0,
    concurrency: int = 8,
) -> list[ProbeResult]:
    """Probe every ``(target name, address)``; one result per target, in completion order."""
    results: list[ProbeResult] = []
    pending = list(reversed(targets))
    live: dict[int, _Probe] = {}
    with selectors.DefaultSelector() as sel:

        while pending or live:
            while pending and len(live) < concurrency:
                target, address = pending.pop()
                host = f"[{address}]" if ":" in address else address
                request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: retina-otel\r\n\r\n".encode()
                opened = _open(target, address, port, request, timeout)
                if isinstance(opened, ProbeResult):
                    results.append(opened)
                    continue
                live[id(opened)] = opened
                sel.register(opened.sock, selectors.EVENT_WRITE, opened)
            now = time.perf_counter()
            wait = max(0.0, min(p.deadline for p in live.values()) - now) if live else 0.0
            for key, _ in sel.select(wait):
                probe: _Probe = key.data
                if not probe.sent:
                    err = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        _close(sel, live, probe)
                        results.append(_failed(probe, errno.errorcode.get(err, str(err))))
                        continue
                    try:
                        probe.sock.send(probe.request)  # ~80 bytes: one send on a fresh connection
                    except OSError as exc:
                        _close(sel, live, probe)
                        results.append(_failed(probe, type(exc).__name__))
                        continue
                    probe.sent = True
                    sel.modify(probe.sock, selectors.EVENT_READ, probe)
                    continue
                try:
                    chunk = probe.sock.recv(4096)
                except OSError as exc:
                    _close(sel, live, probe)
                    results.append(_failed(probe, type(exc).__name__))
                    continue
                if chunk and not probe.received:
                    probe.first_byte = time.perf_counter() - probe.started  # the latency: first response bytes
                probe.received += chunk
                if chunk and len(probe.received) < _MAX_RESPONSE:
                    continue  # read the (small) response to its end, so the server never writes into a reset
                _close(sel, live, probe)
                parts = bytes(probe.received).split(b"\r\n", 1)[0].split()
                ok = len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1] == b"200"
                status = parts[1].decode(errors="replace") if len(parts) >= 2 else "no response"
                seconds = probe.first_byte if ok else time.perf_counter() - probe.started
                results.append(ProbeResult(probe.target, ok, seconds, "" if ok else f"status {status}"))
            now = time.perf_counter()
            for probe in [p for p in live.values() if p.deadline <= now]:
                _close(sel, live, probe)
                results.append(_failed(probe, "timeout"))
    return results


def _failed(probe: _Probe, error: str) -> ProbeResult:
    return ProbeResult(probe.target, False, time.perf_counter() - probe.started, error)


def _close(sel: selectors.BaseSelector, live: dict[int, _Probe], probe: _Probe) -> None:
    with contextlib.suppress(KeyError, ValueError):
        sel.unregister(probe.sock)
    probe.sock.close()
    live.pop(id(probe), None)
