"""End to end: real traffic between sandbox pods -> the whole agent -> /metrics, OTLP, real Prometheus.

One scripted scenario (module fixture ``e2e``) runs once and the tests read it:

* pods ``client`` (namespace e2e-shop), ``server`` (e2e-backend) and ``dns`` (e2e-dns, a dnsmasq) are
  known to k8sattributes through a ``source: file`` endpoints YAML as pods of this agent's node;
  ``probe`` and ``apiserver`` are unknown addresses (the API-server connections for tcplatency);
* forwarded UDP of exact sizes and a small TCP exchange (client -> server), UDP dropped by an nft rule
  in the server (NETFILTER_DROP), a TCP transfer losing a share of its segments in the server's input
  (retransmissions), DNS A queries answered and NXDOMAIN;
* the independent truth comes from nftables named counters inside the pods (every IP packet and TCP
  flag each pod sends to or receives from the other known pods: the same skbs, with ``skb->len`` at L3
  being the IP total length the receivers count), the kernel's own TcpRetransSegs per namespace
  (nstat), and the DNS messages the test itself sent and received.

The agent runs packetparser (aggregation high), dropreason, tcpretrans, dns, tcplatency, packetforward
and linuxutil -> k8sattributes (file) -> flowmetrics (pod level, local context) -> prometheus + otlp,
and the receivers are flushed explicitly, so nothing waits on a report interval.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from retina_otel.config import parse_config
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.support.otlp_sink import OtlpSink
from tests.support.prometheus_server import PrometheusServer, prometheus_server
from tests.test_dashboards import check_dashboards, dashboards, expected_metric_names, metric_names_in, queries

__all__ = ["prometheus_server"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.kernel

NODE = "e2e-node"
P = "networkobservability_"
FLAGS = ("FIN", "SYN", "SYNACK", "ACK", "RST", "PSH", "URG", "ECE", "CWR")
# nft expressions for packetparser's flag columns (SYNACK is SYN with ACK; ACK counts every ACK bit).
NFT_FLAG = {
    "FIN": "tcp flags & fin == fin",
    "SYN": "tcp flags & (syn | ack) == syn",
    "SYNACK": "tcp flags & (syn | ack) == syn | ack",
    "ACK": "tcp flags & ack == ack",
    "RST": "tcp flags & rst == rst",
    "PSH": "tcp flags & psh == psh",
    "URG": "tcp flags & urg == urg",
    "ECE": "tcp flags & ecn == ecn",
    "CWR": "tcp flags & cwr == cwr",
}
UDP_PORT, DROP_PORT, TCP_PORT, LOSS_PORT, API_PORT, API_DEAD_PORT = 7100, 7300, 7200, 7400, 6443, 6444
UDP_SIZES = (1, 100, 1000, 1472)  # payload bytes; each datagram is 28 bytes more at L3
UDP_EACH = 5
DROPPED = 13
LOSS_BYTES = 400_000
OK_NAME, MISSING_NAME = "ok.e2e.test", "missing.e2e.test"
OK_QUERIES, MISSING_QUERIES = 3, 2


# -- the metrics text ---------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = frozenset[tuple[str, str]]


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    """Samples by name and label set (label values unescaped)."""
    out: dict[str, dict[Labels, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        labels = frozenset(
            (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
            for k, v in _LABEL.findall(match.group(3) or "")
        )
        out.setdefault(match.group(1), {})[labels] = float(match.group(4))
    return out


def types_of(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def lab(**labels: str) -> Labels:
    return frozenset(labels.items())


# -- pods and their truth -----------------------------------------------------------------------------


def nft(pod: Pod, ruleset: str) -> None:
    proc = subprocess.run(pod.exec_args(["nft", "-f", "-"]), input=ruleset, text=True, capture_output=True)
    assert proc.returncode == 0, f"{pod.name}: {proc.stderr}\n{ruleset}"


def nft_counters(pod: Pod) -> dict[str, tuple[int, int]]:
    """Named counters of every table in the pod: name -> (packets, bytes)."""
    out = json.loads(pod.run(["nft", "-j", "list", "counters"]).stdout)
    found: dict[str, tuple[int, int]] = {}
    for item in out["nftables"]:
        counter = item.get("counter")
        if counter:
            found[counter["name"]] = (int(counter["packets"]), int(counter["bytes"]))
    return found


def count_table(peers: list[str]) -> str:
    """Counters of every IP packet and TCP flag exchanged with ``peers`` (pod's own view)."""
    lines = ["table ip e2e_truth {", f" set peers {{ type ipv4_addr; elements = {{ {', '.join(peers)} }} }}"]
    names = ["out_all", "in_all"] + [f"{d}_{f}" for d in ("out", "in") for f in FLAGS]
    lines += [f" counter {n} {{ }}" for n in names]
    for direction, hook, match in (("out", "output", "ip daddr @peers"), ("in", "prerouting", "ip saddr @peers")):
        lines.append(f" chain {direction} {{ type filter hook {hook} priority -400;")
        lines.append(f'  {match} counter name "{direction}_all"')
        lines += [f'  {match} {NFT_FLAG[f]} counter name "{direction}_{f}"' for f in FLAGS]
        lines.append(" }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def retrans_segs(pod: Pod) -> int:
    out = pod.run(["nstat", "-asz", "TcpRetransSegs"]).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "TcpRetransSegs":
            return int(parts[1])
    raise AssertionError(out)


def udp_send(src: Pod, dst: str, port: int, payloads: list[bytes]) -> None:
    with src.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        for payload in payloads:
            sock.sendto(payload, (dst, port))


def udp_sink(pod: Pod, port: int) -> socket.socket:
    """A bound UDP socket in ``pod`` (so datagrams are delivered, not dropped as NO_SOCKET)."""
    with pod.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((pod.ipv4, port))
    sock.settimeout(10)
    return sock


def tcp_exchange(client: Pod, server: Pod, port: int, send: int, reply: int, nodelay: bool = True) -> None:
    """Client sends ``send`` bytes, the server answers ``reply`` bytes, both close cleanly."""
    with server.entered():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    received = [0]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(60)
                while received[0] < send:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    received[0] += len(chunk)
                conn.sendall(b"r" * reply)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(1 << 16):
                    pass
        except BaseException as exc:
            errors.append(exc)

    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server.ipv4, port))
        listener.listen(1)
        listener.settimeout(60)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with client.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(60)
            sock.connect((server.ipv4, port))
            sock.sendall(b"s" * send)
            got = 0
            while got < reply:
                chunk = sock.recv(1 << 16)
                assert chunk, "server closed early"
                got += len(chunk)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""
        thread.join(timeout=60)
    assert not errors, errors
    assert received[0] == send


def dns_query(name: str, ident: int) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def dns_rcode(response: bytes) -> int:
    return response[3] & 0x0F


@dataclass
class DnsLog:
    sent: dict[str, int] = field(default_factory=dict)  # name -> queries sent
    answered: dict[tuple[str, int], int] = field(default_factory=dict)  # (name, rcode) -> responses


def dns_ask(client: Pod, server_ip: str, name: str, times: int, log: DnsLog, first_id: int) -> None:
    with client.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(3)
        for i in range(times):
            ident = first_id + i
            for _attempt in range(3):  # a lost datagram is asked again; the receiver counts each one
                sock.sendto(dns_query(name, ident), (server_ip, 53))
                log.sent[name] = log.sent.get(name, 0) + 1
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                assert struct.unpack("!H", data[:2])[0] == ident
                key = (name, dns_rcode(data))
                log.answered[key] = log.answered.get(key, 0) + 1
                break
            else:
                raise AssertionError(f"no DNS answer for {name}")


def start_dnsmasq(pod: Pod, answer: str) -> subprocess.Popen[bytes]:
    proc = pod.popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--group=root",
            "--bind-interfaces",
            f"--listen-address={pod.ipv4}",
            "--except-interface=lo",
            "--pid-file=",
            "--no-ping",
            "--cache-size=0",
            f"--address=/{OK_NAME}/{answer}",
            "--local=/e2e.test/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        assert proc.poll() is None, "dnsmasq exited"
        # Asked from inside the pod (its own address, no veth crossed): invisible to the dns receiver.
        with pod.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(0.5)
            sock.sendto(dns_query(OK_NAME, 1), (pod.ipv4, 53))
            try:
                return dns_rcode(sock.recv(4096)) == 0
            except OSError:
                return False

    assert wait_for(answers, timeout=20, interval=0.2), "dnsmasq did not answer"
    return proc


def dns_answer_of(dns: Pod) -> str:
    """The address dnsmasq answers for OK_NAME (in the sandbox's range, never contacted)."""
    return dns.ipv4.rsplit(".", 1)[0] + ".200"


def pings(src: Pod, address: str) -> bool:
    return src.run(["ping", "-c1", "-W5", address], check=False).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the agent ----------------------------------------------------------------------------------------

ADV_METRICS = (
    "adv_forward_count",
    "adv_forward_bytes",
    "adv_drop_count",
    "adv_drop_bytes",
    "adv_tcpretrans_count",
    "adv_tcpflags_count",
    "adv_dns_request_count",
    "adv_dns_response_count",
    "dns_latency_ms",
)


def agent_config(
    endpoints_file: Path, otlp_port: int, apiserver_ip: str, token: str, veths: list[str]
) -> dict[str, Any]:
    receivers = ["packetparser", "dropreason", "tcpretrans", "dns"]
    return {
        "receivers": {
            "packetparser": {
                "aggregation": "high",
                "interfaces": [f"ro{token}*"],
                "host_interface": "none",
                "report_interval": 300,
                "batch_interval": 0.2,
            },
            "dropreason": {"interval": 300},
            "tcpretrans": {"interval": 300},
            "dns": {"interval": 300, "query_timeout": 0.5},
            "tcplatency": {"interval": 300, "apiserver_ips": [apiserver_ip], "use_kubernetes_service_host": False},
            "packetforward": {"interval": 300},
            # Zero values too, on the scenario's veths: the dashboards' interface/IP panels get their series.
            "linuxutil": {"interval": 300, "include_zero_values": True, "include_interfaces": veths},
        },
        "processors": {
            "k8sattributes": {
                "source": "file",
                "file_path": str(endpoints_file),
                "node_name": NODE,
                "grace_period": 600,
            },
            "flowmetrics": {
                "pod_level": True,
                "remote_context": False,
                "metrics": [{"metricName": name, "sourceLabels": ["podname", "namespace"]} for name in ADV_METRICS],
            },
        },
        "exporters": {
            "prometheus": {"endpoint": f"127.0.0.1:{free_port()}"},
            "otlp": {
                "endpoint": f"127.0.0.1:{otlp_port}",
                "tls": {"insecure": True},
                "interval": 0.5,
                "flush_interval": 0.2,
            },
        },
        "service": {
            "telemetry": {"node_name": NODE, "health": {"endpoint": ""}, "expiry_interval": 3600},
            "pipelines": {
                "logs": {"receivers": receivers, "processors": ["k8sattributes", "flowmetrics"], "exporters": ["otlp"]},
                "metrics": {
                    "receivers": [*receivers, "tcplatency", "packetforward", "linuxutil"],
                    "exporters": ["prometheus", "otlp"],
                },
            },
        },
    }


@dataclass
class E2E:
    agent: Agent
    sink: OtlpSink
    client: Pod
    server: Pod
    dns: Pod
    components: dict[str, Any]
    counters: dict[str, dict[str, tuple[int, int]]]  # pod name -> nft counters
    retrans: dict[str, int]  # pod name -> TcpRetransSegs delta over the scenario
    dns_log: DnsLog
    dropped: int  # NETFILTER_DROP in the server's input (UDP rule + loss rule)
    dropped_bytes: int
    expected: dict[str, dict[Labels, float]]
    known: dict[str, Pod] = field(default_factory=dict)
    apiserver: Pod | None = None

    @property
    def address(self) -> str:
        host, port = self.components["prometheus"].address
        return f"{host}:{port}"

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def flush(self) -> None:
        c = self.components
        c["packetparser"].flush()
        c["dropreason"].flush()
        c["tcpretrans"].flush()
        c["dns"].flush()
        c["tcplatency"].poll()


def _pod_labels(pod: Pod, namespace: str) -> dict[str, str]:
    return {"podname": pod.name, "namespace": namespace}


def expected_series(e: E2E) -> dict[str, dict[Labels, float]]:
    """What flowmetrics must show for the known pods, from the independent counts."""
    ns = {e.client.name: "e2e-shop", e.server.name: "e2e-backend", e.dns.name: "e2e-dns"}
    out: dict[str, dict[Labels, float]] = {}

    def put(metric: str, labels: dict[str, str], value: float) -> None:
        if value:
            out.setdefault(P + metric, {})[lab(**labels)] = float(value)

    for pod in (e.client, e.server, e.dns):
        who = _pod_labels(pod, ns[pod.name])
        counters = e.counters[pod.name]
        for direction, key in (("egress", "out"), ("ingress", "in")):
            packets, size = counters[f"{key}_all"]
            put("adv_forward_count", {"direction": direction, **who}, packets)
            put("adv_forward_bytes", {"direction": direction, **who}, size)
        for flag in FLAGS:  # no direction label: both sides of the pod's TCP add up
            put("adv_tcpflags_count", {"flag": flag, **who}, counters[f"out_{flag}"][0] + counters[f"in_{flag}"][0])
    client, server = _pod_labels(e.client, ns[e.client.name]), _pod_labels(e.server, ns[e.server.name])
    # A dropped packet counts for its sender's egress and its receiver's ingress (local context).
    for metric, value in (("adv_drop_count", e.dropped), ("adv_drop_bytes", e.dropped_bytes)):
        put(metric, {"reason": "NETFILTER_DROP", "direction": "ingress", **server}, value)
        put(metric, {"reason": "NETFILTER_DROP", "direction": "egress", **client}, value)
    # Retransmitted segments: the sender's egress and the receiver's ingress.
    put("adv_tcpretrans_count", {"direction": "egress", **client}, e.retrans[e.client.name])
    put("adv_tcpretrans_count", {"direction": "ingress", **server}, e.retrans[e.client.name])
    put("adv_tcpretrans_count", {"direction": "egress", **server}, e.retrans[e.server.name])
    put("adv_tcpretrans_count", {"direction": "ingress", **client}, e.retrans[e.server.name])
    # DNS: requests and responses both belong to the client (the asking pod).
    # Query names are exported fully qualified, with the trailing dot (as Retina's DNS plugin does).
    for name, sent in e.dns_log.sent.items():
        put("adv_dns_request_count", {"query_type": "A", "query": name + ".", **client}, sent)
    for (name, rcode), count in e.dns_log.answered.items():
        rcode_name = {0: "NOERROR", 3: "NXDOMAIN"}[rcode]
        response = dns_answer_of(e.dns) if rcode == 0 else ""
        labels = {
            "return_code": rcode_name,
            "query_type": "A",
            "query": name + ".",
            "response": response,
            "num_response": "1" if rcode == 0 else "0",
            **client,
        }
        put("adv_dns_response_count", labels, count)
        # Every response matched its query: one latency observation each.
        put("adv_dns_latency_ms_count", {"return_code": rcode_name, "query_type": "A", **client}, count)
    return out


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    tmp = tmp_path_factory.mktemp("e2e")
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(Sandbox())
        client = sandbox.add_pod("client", ipv6=False)
        server = sandbox.add_pod("server", ipv6=False)
        dns = sandbox.add_pod("dns", ipv6=False)
        probe = sandbox.add_pod("probe", ipv6=False)
        apiserver = sandbox.add_pod("apiserver", ipv6=False)
        known = {client.name: client, server.name: server, dns.name: dns}
        endpoints = tmp / "endpoints.yaml"
        endpoints.write_text(
            yaml.safe_dump(
                {
                    "nodes": [{"name": NODE, "ips": [], "zone": "zone-1"}],
                    "endpoints": [
                        {
                            "name": pod.name,
                            "namespace": namespace,
                            "ips": [pod.ipv4],
                            "node": NODE,
                            "labels": {"app": pod.name},
                        }
                        for pod, namespace in ((client, "e2e-shop"), (server, "e2e-backend"), (dns, "e2e-dns"))
                    ],
                }
            )
        )
        # The server drops UDP to DROP_PORT, and every fifth of the client's data segments to LOSS_PORT
        # (deterministic; never SYN/FIN/RST, so the handshakes stay quick), each counted.
        nft(
            server,
            "table ip e2e_drop {\n counter dropped { }\n counter lost { }\n"
            " chain input { type filter hook input priority 0;\n"
            f'  udp dport {DROP_PORT} counter name "dropped" drop\n }}\n'
            " chain loss { type filter hook input priority 10;\n"
            f"  tcp dport {LOSS_PORT} tcp flags & (syn | fin | rst) == 0 ip length > 200 numgen inc mod 5 == 1 "
            'counter name "lost" drop\n }\n}\n',
        )
        # The "API server" ignores connection attempts to its dead port (tcplatency's no_response).
        nft(
            apiserver,
            "table ip e2e_api {\n chain input { type filter hook input priority 0;\n"
            f"  tcp dport {API_DEAD_PORT} drop\n }}\n}}\n",
        )
        start_dnsmasq(dns, dns_answer_of(dns))
        # Neighbour entries of fresh veths: the first packets of a path can be late or lost, so every path
        # is warmed before the agent and the counters start (a late echo reply would be a NO_SOCKET drop).
        for src, dst in ((client, server), (client, dns), (server, client), (dns, client), (probe, apiserver)):
            assert wait_for(partial(pings, src, dst.ipv4)), f"{src.name} cannot reach {dst.name}"
        # The truth: counters in each known pod for traffic with the other known pods.
        for pod in known.values():
            nft(pod, count_table([p.ipv4 for p in known.values() if p is not pod]))

        sink = OtlpSink()
        sink.start()
        stack.callback(sink.stop)
        veths = [pod.host_veth for pod in sandbox.pods]
        config = agent_config(endpoints, sink.port, apiserver.ipv4, sandbox.token, veths)
        agent = Agent(parse_config(config, env={}))
        stack.callback(agent.shutdown)
        agent.start()
        assert wait_for(lambda: agent.readiness()[0], timeout=60), agent.readiness()[1]
        states = {s.id: s for s in agent.states()}
        failed = {k: s.detail for k, s in states.items() if s.status.value != "ok"}
        assert not failed, failed
        components: dict[str, Any] = {k: s.component for k, s in states.items()}
        pp = components["packetparser"]
        assert wait_for(
            lambda: {client.host_veth, server.host_veth, dns.host_veth} <= set(pp.attached_interfaces().values()),
            timeout=20,
        )

        # -- traffic --
        before = {pod.name: retrans_segs(pod) for pod in (client, server)}
        sink_sock = udp_sink(server, UDP_PORT)
        with sink_sock:
            payloads = [bytes([i % 251]) * size for size in UDP_SIZES for i in range(UDP_EACH)]
            udp_send(client, server.ipv4, UDP_PORT, payloads)
            for _ in payloads:
                sink_sock.recv(2048)
        udp_send(client, server.ipv4, DROP_PORT, [b"d" * 64] * DROPPED)
        tcp_exchange(client, server, TCP_PORT, send=3000, reply=5000)
        tcp_exchange(client, server, LOSS_PORT, send=LOSS_BYTES, reply=10, nodelay=False)
        dns_log = DnsLog()
        dns_ask(client, dns.ipv4, OK_NAME, OK_QUERIES, dns_log, first_id=100)
        dns_ask(client, dns.ipv4, MISSING_NAME, MISSING_QUERIES, dns_log, first_id=200)
        # API server: one connection with a little traffic, one attempt that never gets a SYN/ACK.
        tcp_exchange(probe, apiserver, API_PORT, send=100, reply=100)
        with probe.entered():
            dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with dead:
            dead.settimeout(0.5)
            with contextlib.suppress(OSError):
                dead.connect((apiserver.ipv4, API_DEAD_PORT))

        # A DNS query nobody answers (between unknown pods): a lost event {dns, unanswered_query}.
        udp_send(probe, apiserver.ipv4, 53, [dns_query("unanswered.e2e.test", 7)])
        e = E2E(agent, sink, client, server, dns, components, {}, {}, dns_log, 0, 0, {}, apiserver=apiserver)

        last: list[Any] = [None]

        def settled() -> bool:
            """Flush everything; settled when the independent counts and the scrape stop changing and the
            scrape shows exactly what the counts say (packet-exact families) - the tests then compare."""
            e.counters = {name: nft_counters(pod) for name, pod in known.items()}
            e.retrans = {pod.name: retrans_segs(pod) - before[pod.name] for pod in (client, server)}
            server_counts = e.counters[server.name]
            e.dropped = server_counts["dropped"][0] + server_counts["lost"][0]
            e.dropped_bytes = server_counts["dropped"][1] + server_counts["lost"][1]
            e.expected = expected_series(e)
            e.flush()
            got = adv_series(parse_metrics(e.scrape()), known)
            snapshot = (e.counters, e.retrans, got)
            stable, last[0] = snapshot == last[0], snapshot
            return stable and only(got, EXACT) == only(e.expected, EXACT)

        if not wait_for(settled, timeout=30, interval=0.5):  # the tests say what differs; this says why
            named = [a.get("source.k8s.pod.name") for _, a, _ in sink.log_records()]
            print(
                "e2e not settled:",
                agent.readiness()[1],
                f"flow logs {len(named)}, with a source pod name {sum(1 for n in named if n)}",
                {k: getattr(c, "rows_emitted", None) for k, c in components.items()},
                sep="\n",
            )
        e.known = known
        yield e


def adv_series(
    samples: dict[str, dict[Labels, float]], known: dict[str, Pod] | None = None
) -> dict[str, dict[Labels, float]]:
    """The adv_* counter series in a scrape that belong to the scenario's pods."""
    out: dict[str, dict[Labels, float]] = {}
    for name, series in samples.items():
        if not name.startswith(P + "adv_") or name.startswith(P + "adv_node_") or name.endswith(("_bucket", "_sum")):
            continue
        for labels, value in series.items():
            podname = dict(labels).get("podname")
            if known is None or podname in known:
                out.setdefault(name, {})[labels] = value
    return out


# Families checked exactly here; forward/tcpflags are checked in test_exact_forward_and_tcpflags_series.
EXACT = tuple(
    P + n
    for n in (
        "adv_drop_count",
        "adv_drop_bytes",
        "adv_tcpretrans_count",
        "adv_dns_request_count",
        "adv_dns_response_count",
        "adv_dns_latency_ms_count",
    )
)
FORWARD = tuple(P + n for n in ("adv_forward_count", "adv_forward_bytes", "adv_tcpflags_count"))


def only(series: dict[str, dict[Labels, float]], names: tuple[str, ...]) -> dict[str, dict[Labels, float]]:
    return {n: v for n, v in series.items() if n in names}


def _diff(got: dict[str, dict[Labels, float]], want: dict[str, dict[Labels, float]]) -> str:
    lines = []
    for name in sorted(set(got) | set(want)):
        g, w = got.get(name, {}), want.get(name, {})
        for labels in sorted(set(g) | set(w), key=sorted):
            if g.get(labels) != w.get(labels):
                lines.append(f"{name}{dict(sorted(labels))}: got {g.get(labels)} want {w.get(labels)}")
    return "\n".join(lines)


# -- OTLP -----------------------------------------------------------------------------------------------


def _number(point: Any) -> float:
    return float(point.as_int) if point.WhichOneof("value") == "as_int" else float(point.as_double)


def otlp_families(sink: OtlpSink) -> dict[str, Any]:
    """The latest exported Metric of every name."""
    with sink.lock:
        requests = list(sink.metric_requests)
    latest: dict[str, Any] = {}
    for request in requests:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    latest[metric.name] = metric
    return latest


def otlp_as_samples(metric: Any) -> dict[str, dict[Labels, float]]:
    """An OTLP metric rendered as the Prometheus samples it must equal (histograms: cumulative le buckets)."""
    kind = metric.WhichOneof("data")
    out: dict[str, dict[Labels, float]] = {}
    for point in getattr(metric, kind).data_points:
        attrs = {a.key: a.value.string_value for a in point.attributes}
        if kind == "histogram":
            assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
            running = 0
            bounds = [*(_le(b) for b in point.explicit_bounds), "+Inf"]
            for bound, count in zip(bounds, point.bucket_counts, strict=True):
                running += count
                out.setdefault(metric.name + "_bucket", {})[lab(**attrs, le=bound)] = float(running)
            out.setdefault(metric.name + "_sum", {})[lab(**attrs)] = float(point.sum)
            out.setdefault(metric.name + "_count", {})[lab(**attrs)] = float(point.count)
        else:
            out.setdefault(metric.name, {})[lab(**attrs)] = _number(point)
    return out


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def compare_otlp(e: E2E, names: list[str]) -> str:
    """Differences between the scrape and the sink's latest export for the families ``names``."""
    text = e.scrape()
    samples, types = parse_metrics(text), types_of(text)
    families = otlp_families(e.sink)
    problems = []
    for name in names:
        metric = families.get(name)
        if metric is None:
            problems.append(f"{name}: not received over OTLP")
            continue
        kind = metric.WhichOneof("data")
        want = {"counter": "sum", "histogram": "histogram", "gauge": "gauge"}[types[name]]
        if kind != want:
            problems.append(f"{name}: OTLP {kind}, Prometheus {types[name]}")
            continue
        if kind == "sum" and not (metric.sum.is_monotonic and metric.sum.aggregation_temporality == 2):
            problems.append(f"{name}: not a monotonic cumulative sum")
        if kind == "histogram" and metric.histogram.aggregation_temporality != 2:
            problems.append(f"{name}: histogram not cumulative")
        got = otlp_as_samples(metric)
        prom = {n: v for n, v in samples.items() if n in got or n == name}
        diff = _diff(got, prom)
        if diff:
            problems.append(f"{name}:\n{diff}")
    return "\n".join(problems)


# -- the tests ------------------------------------------------------------------------------------------


def test_exact_drop_retrans_dns_series(e2e: E2E) -> None:
    """Every adv_* drop, retransmission and DNS series of the scenario's pods, exactly."""
    got = adv_series(parse_metrics(e2e.scrape()), e2e.known)
    assert only(got, EXACT) == only(e2e.expected, EXACT), _diff(only(got, EXACT), only(e2e.expected, EXACT))
    drop = P + "adv_drop_count"
    server = lab(reason="NETFILTER_DROP", direction="ingress", podname="server", namespace="e2e-backend")
    assert got[drop][server] == e2e.dropped >= DROPPED
    assert e2e.retrans["client"] > 0, "the loss rule caused no retransmission"
    requests = got[P + "adv_dns_request_count"]
    assert sum(requests.values()) == sum(e2e.dns_log.sent.values()) >= OK_QUERIES + MISSING_QUERIES
    responses = got[P + "adv_dns_response_count"]
    assert {dict(k)["return_code"] for k in responses} == {"NOERROR", "NXDOMAIN"}


def test_exact_forward_and_tcpflags_series(e2e: E2E) -> None:
    """adv_forward_count/bytes per pod and direction = the IP packets/bytes the pod sent to / received from
    the other pods (nft counters in the pod); adv_tcpflags_count = its TCP segments per flag."""
    got = adv_series(parse_metrics(e2e.scrape()), e2e.known)
    assert only(got, FORWARD) == only(e2e.expected, FORWARD), _diff(only(got, FORWARD), only(e2e.expected, FORWARD))


def test_exact_sizes_in_flow_logs_over_otlp(e2e: E2E) -> None:
    """The flow records (OTLP logs) carry the exact UDP packets and bytes at each pod's veth, the exact
    drops with their kernel reason, and TCP bytes equal to the truth counters of the client pod."""
    udp_bytes = sum(UDP_EACH * (28 + n) for n in UDP_SIZES)
    udp_packets = len(UDP_SIZES) * UDP_EACH
    client, server = e2e.client.ipv4, e2e.server.ipv4

    def rows(**match: Any) -> list[dict[str, Any]]:
        found = []
        for _, attrs, record in e2e.sink.log_records():
            attrs = {**attrs, "event.name": record.event_name}
            if all(attrs.get(k) == v for k, v in match.items()):
                found.append(attrs)
        return found

    def total(key: str, **match: Any) -> int:
        return sum(int(a[key]) for a in rows(**match))

    udp = {"source.address": client, "destination.address": server, "destination.port": UDP_PORT}
    for point in ("from_endpoint", "to_endpoint"):
        where = {**udp, "retina.flow.observation_point": point, "event.name": "retina.flow.flow"}

        def arrived(w: dict[str, Any] = where) -> bool:
            return total("retina.flow.packets", **w) == udp_packets

        assert wait_for(arrived, timeout=15), rows(**where)
        assert total("retina.flow.bytes", **where) == udp_bytes
        assert total("retina.flow.reply_packets", **where) == 0
    drops = {"source.address": client, "destination.port": DROP_PORT, "event.name": "retina.flow.drop"}
    assert total("retina.flow.packets", **drops) == DROPPED
    assert total("retina.flow.bytes", **drops) == DROPPED * (28 + 64)
    assert {a["retina.drop.reason"] for a in rows(**drops)} == {"NETFILTER_DROP"}
    assert {a["destination.k8s.pod.name"] for a in rows(**drops)} == {"server"}
    # TCP to TCP_PORT at the client's veth, both ways, equals what the client's own counters saw.
    tcp_out = {"source.address": client, "destination.port": TCP_PORT, "retina.flow.observation_point": "from_endpoint"}
    tcp_in = {"source.address": server, "source.port": TCP_PORT, "retina.flow.observation_point": "to_endpoint"}
    sent = total("retina.flow.bytes", **tcp_out)
    received = total("retina.flow.bytes", **tcp_in)
    assert sent > 3000 and received > 5000  # payload plus headers
    # (The client's nft counters cover all its TCP; the exchange on TCP_PORT is a part of it.)
    assert sent < e2e.counters["client"]["out_ACK"][1] + e2e.counters["client"]["out_SYN"][1]


def test_same_values_over_otlp(e2e: E2E) -> None:
    """Every adv_* family (and the API-server histograms) arrives over OTLP/gRPC with the scrape's values:
    monotonic cumulative sums, histograms with the same buckets."""
    text = e2e.scrape()
    names = sorted(n for n, t in types_of(text).items() if n.startswith(P + "adv_"))
    assert P + "adv_node_apiserver_latency" in names and P + "adv_dns_latency_ms" in names
    problems: list[str] = []

    def same() -> bool:
        # Every family the agent serves is exported over OTLP too (names; node-level values keep moving).
        not_sent = set(types_of(e2e.scrape())) - set(otlp_families(e2e.sink))
        problems[:] = [compare_otlp(e2e, names) + (f"\nnot over OTLP: {sorted(not_sent)}" if not_sent else "")]
        return not problems[0]

    assert wait_for(same, timeout=20, interval=0.3), problems[0]
    # Flow records arrived as OTLP logs, enriched with both ends' pod names.
    records = e2e.sink.log_records()
    names_seen = {(a.get("source.k8s.pod.name"), a.get("destination.k8s.pod.name")) for _, a, _ in records}
    assert ("client", "server") in names_seen and ("client", "dns") in names_seen


def test_real_prometheus_scrapes_the_agent(e2e: E2E, prometheus_server: Callable[..., PrometheusServer]) -> None:
    """Debian's Prometheus scrapes /metrics; PromQL returns the scenario's values under Retina's names."""
    prom = prometheus_server([e2e.address])
    assert prom.wait_for_target_up(timeout=30), prom.targets_health()
    samples = parse_metrics(e2e.scrape())
    fwd = f'{P}adv_forward_count{{podname="client",namespace="e2e-shop",direction="egress"}}'
    want_fwd = samples[P + "adv_forward_count"][lab(direction="egress", podname="client", namespace="e2e-shop")]

    def value(q: str) -> float | None:
        return prom.query_value(q)

    assert wait_for(lambda: value(fwd) == want_fwd, timeout=30, interval=0.5), (value(fwd), want_fwd)
    drops = f'{P}adv_drop_count{{podname="server",reason="NETFILTER_DROP",direction="ingress"}}'
    assert value(drops) == e2e.dropped
    assert value(f'sum({P}adv_dns_request_count{{podname="client"}})') == sum(e2e.dns_log.sent.values())
    assert value(f'sum({P}adv_dns_latency_ms_count{{podname="client"}})') == sum(e2e.dns_log.answered.values())
    assert value(f'{P}adv_tcpretrans_count{{podname="client",direction="egress"}}') == e2e.retrans["client"]
    # Retina's exact names: nothing gains a _total suffix, and the control-plane family is there.
    assert prom.query('{__name__=~"(controlplane_)?networkobservability_.*_total"}') == []
    assert prom.query(f"{P}adv_forward_count_total") == []
    assert prom.query("controlplane_networkobservability_lost_events_counter") is not None
    # A histogram through PromQL: every API-server latency sample is at most 4.5 ms here.
    apiserver = value(f'sum({P}adv_node_apiserver_latency_bucket{{le="+Inf"}})')
    assert apiserver is not None and apiserver >= 1


# Dashboard metric names no component of the agent exports, with the reason (a known gap, reported).
NOT_EXPORTED: dict[str, str] = {}


def test_dashboards_use_only_live_metric_names(e2e: E2E) -> None:
    """Every metric name a chart dashboard queries is in a live scrape of the agent after the scenario."""
    assert e2e.apiserver is not None
    # A host-namespace TCP connection to a non-loopback address: linuxutil's tcp_connection_remote.
    with e2e.apiserver.entered():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    used: set[str] = set()
    for path in dashboards():
        for _, expr in queries(json.loads(path.read_text())):
            used |= metric_names_in(expr)
    with listener:
        listener.bind((e2e.apiserver.ipv4, API_PORT + 10))
        listener.listen(1)
        with socket.create_connection((e2e.apiserver.ipv4, API_PORT + 10), timeout=10) as conn:
            accepted, _ = listener.accept()
            with accepted:
                missing: list[str] = []

                def all_there() -> bool:
                    e2e.flush()
                    live = expected_metric_names(e2e.scrape())
                    missing[:] = sorted(used - live - set(NOT_EXPORTED))
                    return not missing

                assert wait_for(all_there, timeout=20, interval=0.5), f"never exported here: {missing}"
                live = expected_metric_names(e2e.scrape())
            del conn
    assert check_dashboards(live | set(NOT_EXPORTED)) == []
    assert not (set(NOT_EXPORTED) & live), "now exported: remove it from NOT_EXPORTED"
    assert set(NOT_EXPORTED) <= used, "no longer used by a dashboard: remove it from NOT_EXPORTED"
