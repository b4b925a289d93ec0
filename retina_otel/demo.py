"""``retina-otel demo``: the agent with its embedded default config, observing real traffic here.

Builds three sandbox "pods" (network namespaces routed through the host, 198.18.0.0/15 only), describes
them in a standalone endpoints file for the enrichment, generates traffic between them (TCP requests,
UDP, pings, DNS queries to a dnsmasq pod, a few packets into an nft drop rule), runs the agent, and
prints what the agent measured every few seconds. Everything is removed on exit (Ctrl-C or
``--duration``). Prometheus is on :10093 and health on :18081 meanwhile, as in production.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import yaml

from retina_otel.config import load_config
from retina_otel.health import HealthServer
from retina_otel.metrics.store import HistogramValue, MetricStore
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.service import Agent

__all__ = ["add_arguments", "main_from_args"]

log = logging.getLogger(__name__)

SUMMARY_METRICS = (
    "networkobservability_forward_count",
    "networkobservability_forward_bytes",
    "networkobservability_drop_count",
    "networkobservability_dns_request_count",
    "networkobservability_dns_response_count",
    "networkobservability_conntrack_total_connections",
    "networkobservability_adv_forward_count",
    "networkobservability_adv_drop_count",
    "networkobservability_adv_dns_response_count",
    "networkobservability_tcp_state",
    "controlplane_networkobservability_lost_events_counter",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=0, help="seconds to run; 0 = until Ctrl-C")
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds between summaries")


def _endpoints_file(pods: list[Pod], directory: Path) -> Path:
    entries = [
        {
            "name": f"{pod.name}-7f9c",
            "namespace": "demo",
            "ips": [ip for ip in (pod.ipv4, pod.ipv6) if ip],
            "labels": {"app": pod.name},
            "workload": {"kind": "Deployment", "name": pod.name},
            "node": socket.gethostname(),
        }
        for pod in pods
    ]
    path = directory / "endpoints.yaml"
    path.write_text(yaml.safe_dump({"endpoints": entries}))
    return path


def _tcp_server(pod: Pod, port: int, stop: threading.Event) -> None:
    with pod.entered():
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((pod.ipv4, port))
    server.listen(64)
    server.settimeout(0.5)
    with server:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    data = conn.recv(65536)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (len(data) * 4))


def _traffic(client: Pod, server: Pod, dns: Pod, stop: threading.Event) -> None:
    rng = random.Random(7)
    while not stop.wait(0.2):
        with contextlib.suppress(OSError):
            with client.entered():
                conn = socket.create_connection((server.ipv4, 8080), timeout=2)
            with conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"q" * rng.randint(10, 500))
                while conn.recv(65536):
                    pass
        with contextlib.suppress(OSError), client.entered():
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with udp:
                udp.sendto(b"u" * 64, (server.ipv4, 9999))  # nothing listens: a NO_SOCKET drop
                udp.sendto(b"f" * 64, (server.ipv4, 9998))  # the backend's firewall: a NETFILTER_DROP
        if rng.random() < 0.5:
            client.run(["ping", "-c", "1", "-W", "1", server.ipv4], check=False)
        if rng.random() < 0.5:
            name = rng.choice(["shop.demo.test", "missing.demo.test", "api.demo.test"])
            client.run(["python3", "-c", _DNS_QUERY, dns.ipv4, name], check=False)


_DNS_QUERY = """
import socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
q = struct.pack('!HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\x00' + struct.pack('!HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q, (server, 53))
try: s.recv(512)
except OSError: pass
"""


def _summary(store: MetricStore) -> str:
    lines = []
    for name in SUMMARY_METRICS:
        family = store.get(name)
        if family is None:
            continue
        snap = family.snapshot()
        for labels, value, _ in sorted(snap.series, key=lambda s: s[0])[:12]:
            if isinstance(value, HistogramValue) or not value:
                continue
            label_text = ",".join(f"{k}={v}" for k, v in zip(snap.label_names, labels, strict=True))
            lines.append(f"  {name}{{{label_text}}} = {value:g}")
    return "\n".join(lines) or "  (no metrics yet)"


@contextlib.contextmanager
def _dnsmasq(pod: Pod, workdir: Path) -> Iterator[None]:
    binary = shutil.which("dnsmasq")
    if binary is None:
        yield
        return
    proc = pod.popen(
        [
            binary,
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--port=53",
            f"--listen-address={pod.ipv4}",
            "--bind-interfaces",
            "--address=/shop.demo.test/198.18.200.10",
            "--address=/api.demo.test/198.18.200.11",
            "--address=/missing.demo.test/",
            f"--pid-file={workdir / 'dnsmasq.pid'}",
            "--user=root",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()


def main_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with tempfile.TemporaryDirectory(prefix="retina-otel-demo-") as tmp, Sandbox() as sandbox:
        workdir = Path(tmp)
        client = sandbox.add_pod("frontend")
        server = sandbox.add_pod("backend")
        dns = sandbox.add_pod("coredns")
        endpoints = _endpoints_file([client, server, dns], workdir)
        server.run(["nft", "add", "table", "inet", "demo"])
        server.run(["nft", "add", "chain", "inet", "demo", "input", "{ type filter hook input priority 0 ; }"])
        server.run(["nft", "add", "rule", "inet", "demo", "input", "udp", "dport", "9998", "drop"])
        os.environ.setdefault("RETINA_OTEL_ENDPOINTS_FILE", str(endpoints))
        config = load_config(None)
        agent = Agent(config)
        health = HealthServer(config.service.telemetry.health.endpoint, agent.readiness)
        threads = [
            threading.Thread(target=_tcp_server, args=(server, 8080, stop), daemon=True),
            threading.Thread(target=_traffic, args=(client, server, dns, stop), daemon=True),
        ]
        with _dnsmasq(dns, workdir):
            try:
                health.start()
                agent.start()
                ready, detail = agent.readiness()
                print(f"agent ready={ready}; components: {detail['components']}", flush=True)
                print("metrics: http://127.0.0.1:10093/metrics   health: http://127.0.0.1:18081/readyz", flush=True)
                for t in threads:
                    t.start()
                deadline = time.monotonic() + args.duration if args.duration else None
                while not stop.wait(args.report_every):
                    print(
                        f"--- {time.strftime('%H:%M:%S')} what the agent measured:\n{_summary(agent.metrics)}",
                        flush=True,
                    )
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            finally:
                stop.set()
                for t in threads:
                    if t.is_alive():
                        t.join(timeout=5)
                agent.shutdown()
                health.shutdown()
    print("demo finished; namespaces, links and filters removed", flush=True)
    return 0
