"""Connection spans from real traffic between sandbox pods, into an OTLP TraceService sink.

The components are wired as the agent wires a logs -> traces connector: packetparser (both pods'
veths: the client's and the server's observation points, i.e. two nodes' worth of spans), dropreason,
tcpretrans and dns feed the ``spans`` connector, which hands its spans to the real OTLP exporter (gRPC)
and a sink built from opentelemetry-proto's TraceService. The truth comes from the test: connect and
close times it measured, nftables counters of what it dropped, DNS latencies it observed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import pytest

from retina_otel.bpf.clock import kernel_hz
from retina_otel.component import CreateSettings, Lifecycle
from retina_otel.controller.configs import reconcile_traces_configurations
from retina_otel.controller.kube import KubeClient
from retina_otel.exporters.otlp import OtlpConfig, OtlpExporter
from retina_otel.processors.k8sattributes import FACTORY as K8S_FACTORY
from retina_otel.processors.k8sattributes import K8sAttributesConfig
from retina_otel.processors.tcplatency import FACTORY as LATENCY_PROCESSOR
from retina_otel.processors.tcplatency import TcpLatencyProcessorConfig
from retina_otel.receivers.dns import FACTORY as DNS_FACTORY
from retina_otel.receivers.dns import DnsConfig
from retina_otel.receivers.dropreason import FACTORY as DROP_FACTORY
from retina_otel.receivers.dropreason import DropReasonConfig
from retina_otel.receivers.packetparser import FACTORY as PP_FACTORY
from retina_otel.receivers.packetparser import PacketParserConfig
from retina_otel.receivers.tcplatency import FACTORY as LATENCY_FACTORY
from retina_otel.receivers.tcplatency import TcpLatencyReceiver
from retina_otel.receivers.tcpretrans import FACTORY as RETRANS_FACTORY
from retina_otel.receivers.tcpretrans import TcpRetransConfig
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import TestHost, wait_for
from retina_otel.testing_k8s import EmulatedCluster
from retina_otel.traces.connector import SpanConnector, SpansConfig
from tests.support.otlp_sink import OtlpSink
from tests.test_dns import start_dnsmasq, stop
from tests.test_k8s_cache import pod as k8s_pod

pytestmark = pytest.mark.kernel

CLIENT, SERVER = 3, 2  # OTLP SpanKind numbers
NODE = "spans-node"
PORT, CLOSED_PORT, DROP_PORT = 7800, 7801, 7802
HZ = kernel_hz() or 100
SLACK_NS = 10**9 // HZ + 2_000_000  # packetparser's high-aggregation clock ticks in jiffies
WHOLE_RANGE = [{"to": {"ipBlock": {"cidr": "198.18.0.0/15"}}}]


class Node:
    """The receivers -> (k8sattributes) -> spans -> otlp chain on one TestHost, started in the agent's order."""

    def __init__(
        self,
        sandbox: Sandbox,
        sink: OtlpSink,
        spans: dict[str, Any],
        k8s_url: str = "",
        only: Pod | None = None,
        latency: bool = False,
    ) -> None:
        """``only``: an agent of a "node" holding just this pod (packetparser on its veth, nothing else);
        ``latency``: with the tcplatency receiver (read only by :meth:`poll_latency`) and processor before
        the connector, as in the chart's logs pipeline."""
        self.exporter = OtlpExporter(
            CreateSettings("otlp", "exporter"),
            OtlpConfig(endpoint=f"127.0.0.1:{sink.port}", tls={"insecure": True}, flush_interval=0.1,
                       signals=["traces"]),
            "grpc",
        )  # fmt: skip
        config = SpansConfig.model_validate({"close_delay": 1.5, "flush_interval": 0.2, **spans})
        self.spans = SpanConnector(CreateSettings("spans", "connector"), config, self.exporter)
        head: Any = self.spans
        self.components: list[Lifecycle] = [self.exporter, self.spans]
        extensions: dict[str, object] = {}
        if k8s_url:
            head = K8S_FACTORY.create(
                CreateSettings("k8sattributes", "processor"),
                K8sAttributesConfig(api_url=k8s_url, node_name=NODE, backoff_base=0.05),
                self.spans,
            )
            self.components.append(head)
            extensions["k8s_cache"] = head
        self.latency: TcpLatencyReceiver | None = None
        if latency:
            head = LATENCY_PROCESSOR.create(
                CreateSettings("tcplatency", "processor"), TcpLatencyProcessorConfig(), head
            )
            self.components.append(head)
            self.latency = LATENCY_FACTORY.create(
                CreateSettings("tcplatency", "receiver"),
                LATENCY_FACTORY.config_model(interval=3600, use_kubernetes_service_host=False),
                None,
            )
            extensions.update(self.latency.extensions())
        self.pp = PP_FACTORY.create(
            CreateSettings("packetparser", "receiver"),
            PacketParserConfig(
                interfaces=(only.host_veth,) if only else (f"ro{sandbox.token}*",), host_interface="none"
            ),
            head,
        )
        extensions.update(self.pp.extensions())  # type: ignore[attr-defined]
        self.receivers = (
            [self.pp]
            if only
            else [
                self.pp,
                DNS_FACTORY.create(CreateSettings("dns", "receiver"), DnsConfig(interval=0.3, source="tc"), head),
                DROP_FACTORY.create(CreateSettings("dropreason", "receiver"), DropReasonConfig(interval=0.3), head),
                RETRANS_FACTORY.create(CreateSettings("tcpretrans", "receiver"), TcpRetransConfig(interval=0.3), head),
            ]
        )
        if self.latency is not None:
            self.receivers.append(self.latency)
        self.components += self.receivers
        self.host = TestHost(node_name=f"node-of-{only.name}" if only else NODE, extensions=extensions)

    def start(self, pods: list[Pod]) -> None:
        for component in self.components:
            component.start(self.host)
        wanted = {p.host_ifindex for p in pods}
        assert wait_for(lambda: wanted <= set(self.pp.attached_interfaces()), timeout=10)  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        for component in reversed(self.components):
            with contextlib.suppress(Exception):
                component.shutdown()


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    s = OtlpSink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_node(sandbox: Sandbox, sink: OtlpSink) -> Iterator[Any]:
    made: list[Node] = []

    def make(
        spans: dict[str, Any], pods: list[Pod], k8s_url: str = "", only: Pod | None = None, latency: bool = False
    ) -> Node:
        node = Node(sandbox, sink, spans, k8s_url, only, latency)
        made.append(node)
        node.start(pods)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.shutdown()


class Server:
    """A TCP server in ``pod`` answering each connection with what it read, closing after the client."""

    def __init__(self, pod: Pod, port: int) -> None:
        with pod.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((pod.ipv4, port))
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            try:
                with conn:
                    conn.settimeout(30)
                    while data := conn.recv(65536):
                        conn.sendall(data)
            except BaseException as exc:
                self.errors.append(exc)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()
        assert not self.errors, self.errors


def exchange(client: Pod, address: str, port: int, payload: bytes = b"x" * 100) -> tuple[int, int, int]:
    """connect, send, read the echo, half-close, read EOF, close: (client port, t before connect, t after close)."""
    with client.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t0 = time.time_ns()
    with sock:
        sock.settimeout(30)
        sock.connect((address, port))
        local_port = int(sock.getsockname()[1])
        sock.sendall(payload)
        got = 0
        while got < len(payload):
            chunk = sock.recv(65536)
            assert chunk
            got += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    return local_port, t0, time.time_ns()


def spans_to(sink: OtlpSink, port: int) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    return [s for s in sink.spans() if s[1].get("destination.port") == port and s[1].get("network.transport") == "tcp"]


def nft(pod: Pod, ruleset: str) -> None:
    subprocess.run(pod.exec_args(["nft", "-f", "-"]), input=ruleset, text=True, check=True)


def nft_counter(pod: Pod, table: str, name: str) -> int:
    out = json.loads(pod.run(["nft", "-j", "list", "counter", "inet", table, name]).stdout)
    return int(next(i["counter"]["packets"] for i in out["nftables"] if "counter" in i))


def test_short_connections_give_one_client_and_one_server_span_each_in_one_trace(
    make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink
) -> None:
    client, server = client_server
    make_node({"traces": [{"captureLevel": "FirstPacket", "traceTargets": WHOLE_RANGE}]}, [client, server])
    srv = Server(server, PORT)
    try:
        n = 20
        measured = {port: (t0, t1) for port, t0, t1 in (exchange(client, server.ipv4, PORT) for _ in range(n))}
    finally:
        srv.close()
    assert len(measured) == n
    assert wait_for(lambda: len(spans_to(sink, PORT)) >= 2 * n, timeout=15), len(spans_to(sink, PORT))
    time.sleep(0.5)  # nothing more may come
    got = spans_to(sink, PORT)
    assert len(got) == 2 * n
    traces: dict[bytes, dict[int, Any]] = {}
    for resource, attrs, span in got:
        assert attrs["source.address"] == client.ipv4 and attrs["destination.address"] == server.ipv4
        assert span.kind not in traces.setdefault(span.trace_id, {}), "two spans of one side in a trace"
        traces[span.trace_id][span.kind] = (resource, attrs, span)
    assert len(traces) == n
    for pair in traces.values():
        assert set(pair) == {CLIENT, SERVER}
        _, c_attrs, c_span = pair[CLIENT]
        _, s_attrs, s_span = pair[SERVER]
        assert s_span.parent_span_id == c_span.span_id and not c_span.parent_span_id
        assert c_attrs["source.port"] == s_attrs["source.port"]
        t0, t1 = measured[c_attrs["source.port"]]
        for attrs, span in ((c_attrs, c_span), (s_attrs, s_span)):
            assert t0 - SLACK_NS <= span.start_time_unix_nano <= span.end_time_unix_nano <= t1 + SLACK_NS
            assert attrs["retina.span.close_reason"] == "fin" and span.status.code == 0
            assert attrs["retina.tcp.flags.syn"] == 1 and attrs["retina.tcp.flags.synack"] == 1
            assert attrs["retina.flow.packets"] >= 4 and attrs["retina.flow.reply_packets"] >= 3
        assert c_span.name == f"tcp {client.ipv4}:{c_attrs['source.port']} -> {server.ipv4}:{PORT}"


def test_two_agents_each_seeing_one_pod_put_each_pair_in_one_trace(
    make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink
) -> None:
    """Two "nodes": one agent sees only the client's veth, another only the server's. Each derives the ids on
    its own; every connection still gives one CLIENT span (client's node) and one SERVER span (server's
    node) in one trace, the server's span the client's child."""
    client, server = client_server
    spans = {"traces": [{"captureLevel": "FirstPacket", "traceTargets": WHOLE_RANGE}]}
    make_node(spans, [client], only=client)
    make_node(spans, [server], only=server)
    srv = Server(server, PORT)
    try:
        ports = [exchange(client, server.ipv4, PORT)[0] for _ in range(10)]
    finally:
        srv.close()
    assert wait_for(lambda: len(spans_to(sink, PORT)) >= 20, timeout=15)
    time.sleep(0.5)
    got = spans_to(sink, PORT)
    assert len(got) == 20
    by_trace: dict[bytes, dict[int, Any]] = {}
    for resource, attrs, span in got:
        by_trace.setdefault(span.trace_id, {})[span.kind] = (resource, attrs, span)
    assert len(by_trace) == 10
    for pair in by_trace.values():
        (c_res, _, c_span), (s_res, _, s_span) = pair[CLIENT], pair[SERVER]
        assert c_res["k8s.node.name"] == f"node-of-{client.name}" and s_res["k8s.node.name"] == f"node-of-{server.name}"
        assert s_span.parent_span_id == c_span.span_id
    assert sorted(a["source.port"] for _, a, s in got if s.kind == CLIENT) == sorted(ports)


def test_spans_carry_handshake_time_and_smoothed_rtt_with_tcplatency(
    make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink
) -> None:
    """With tcplatency before the connector, both spans of a connection carry the kernel's handshake time
    (the client's, within the connect the test measured) and a smoothed RTT. The receiver's table is read
    while each connection is open, so the reports of its close are annotated."""
    client, server = client_server
    node = make_node(
        {"traces": [{"captureLevel": "FirstPacket", "traceTargets": WHOLE_RANGE}]}, [client, server], latency=True
    )
    srv = Server(server, PORT)
    connects: dict[int, int] = {}  # client port -> ns the connect() took
    try:
        for _ in range(3):
            with client.entered():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(30)
                t0 = time.monotonic_ns()
                sock.connect((server.ipv4, PORT))
                connects[int(sock.getsockname()[1])] = time.monotonic_ns() - t0
                sock.sendall(b"z" * 100)
                got = 0
                while got < 100:
                    chunk = sock.recv(65536)
                    assert chunk
                    got += len(chunk)
                node.latency.poll()  # the flow is in the kernel's table now: later reports get its numbers
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(1) == b""
    finally:
        srv.close()
    assert wait_for(lambda: len(spans_to(sink, PORT)) >= 6, timeout=15), len(spans_to(sink, PORT))
    time.sleep(0.5)
    got = spans_to(sink, PORT)
    assert len(got) == 6 and {span.kind for _, _, span in got} == {CLIENT, SERVER}
    for _, attrs, span in got:
        taken_us = connects[attrs["source.port"]] / 1000
        assert 0 < attrs["retina.tcp.handshake_us"] <= taken_us + 1000, (span.kind, attrs, taken_us)
        assert attrs["retina.tcp.srtt_us"] > 0, (span.kind, attrs)


def test_all_packets_adds_every_report_as_an_event(
    make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink
) -> None:
    client, server = client_server
    make_node({"traces": [{"captureLevel": "AllPackets", "traceTargets": WHOLE_RANGE}]}, [client, server])
    srv = Server(server, PORT)
    try:
        exchange(client, server.ipv4, PORT, payload=b"y" * 200_000)
    finally:
        srv.close()
    assert wait_for(lambda: len(spans_to(sink, PORT)) >= 2, timeout=15)
    for _, attrs, span in spans_to(sink, PORT):
        reports = [{a.key: a.value for a in e.attributes} for e in span.events if e.name == "retina.flow.report"]
        assert reports and span.dropped_events_count == 0
        sent = sum(r["retina.flow.packets"].int_value for r in reports if not r["retina.flow.is_reply"].bool_value)
        back = sum(r["retina.flow.packets"].int_value for r in reports if r["retina.flow.is_reply"].bool_value)
        assert (sent, back) == (attrs["retina.flow.packets"], attrs["retina.flow.reply_packets"])
        assert "SYN" in reports[0]["retina.tcp.flags"].string_value


def test_ipv6_connections_give_span_pairs(make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink) -> None:
    client, server = client_server
    assert server.ipv6
    make_node({"traces": [{"captureLevel": "FirstPacket", "traceTargets": [{}]}]}, [client, server])
    with server.entered():
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with listener:
        listener.bind((server.ipv6, PORT))
        listener.listen(8)
        ports = []
        for _ in range(3):
            with client.entered():
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            with sock:
                sock.connect((server.ipv6, PORT))
                ports.append(sock.getsockname()[1])
                conn, _ = listener.accept()
                conn.close()
                assert sock.recv(1) == b""
    assert wait_for(lambda: len(spans_to(sink, PORT)) >= 6, timeout=15)
    got = spans_to(sink, PORT)
    assert sorted(a["source.port"] for _, a, _ in got) == sorted(ports * 2)
    assert {a["network.type"] for _, a, _ in got} == {"ipv6"}
    assert len({s.trace_id for _, _, s in got}) == 3


def test_refused_connection_gives_error_spans(make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink) -> None:
    client, server = client_server
    make_node({"traces": [{"captureLevel": "FirstPacket", "traceTargets": WHOLE_RANGE}]}, [client, server])
    with client.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, pytest.raises(ConnectionRefusedError):
        sock.connect((server.ipv4, CLOSED_PORT))
    assert wait_for(lambda: len(spans_to(sink, CLOSED_PORT)) >= 2, timeout=15)
    got = spans_to(sink, CLOSED_PORT)
    assert sorted(span.kind for _, _, span in got) == [SERVER, CLIENT]
    for _, attrs, span in got:
        # The kernel drops the SYN nobody listens for (NO_SOCKET) and answers with a reset.
        assert span.status.code == 2 and span.status.message.startswith("connection refused")
        assert attrs["retina.span.close_reason"] == "refused"


def test_drops_in_an_nft_rule_are_events_on_that_connections_spans(
    make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink
) -> None:
    client, server = client_server
    node = make_node({"traces": [{"captureLevel": "FirstPacket", "traceTargets": WHOLE_RANGE}]}, [client, server])
    srv = Server(server, DROP_PORT)
    try:
        clean_port, _, _ = exchange(client, server.ipv4, DROP_PORT)
        # Data segments (not the handshake) into the server are dropped until the rule goes.
        nft(
            server,
            f"""table inet spans_drop {{
  counter dropped {{ }}
  chain in {{ type filter hook input priority 0; tcp dport {DROP_PORT} meta length > 200 counter name "dropped" drop; }}
}}
""",
        )
        with client.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(30)
            sock.connect((server.ipv4, DROP_PORT))
            dropped_port = int(sock.getsockname()[1])
            sock.sendall(b"d" * 1000)
            assert wait_for(lambda: nft_counter(server, "spans_drop", "dropped") >= 2, timeout=10)
            server.run(["nft", "flush", "chain", "inet", "spans_drop", "in"])  # no more drops; counter kept
            nft_dropped = nft_counter(server, "spans_drop", "dropped")
            server.run(["nft", "delete", "table", "inet", "spans_drop"])
            got = 0
            while got < 1000:
                chunk = sock.recv(65536)
                assert chunk
                got += len(chunk)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""
    finally:
        server.run(["nft", "delete", "table", "inet", "spans_drop"], check=False)
        srv.close()
    assert wait_for(lambda: len(spans_to(sink, DROP_PORT)) >= 4, timeout=20)
    by_port: dict[int, list[Any]] = {}
    for _, attrs, span in spans_to(sink, DROP_PORT):
        by_port.setdefault(attrs["source.port"], []).append((attrs, span))
    assert set(by_port) == {clean_port, dropped_port}
    for _attrs, span in by_port[clean_port]:
        assert span.status.code == 0 and not [e for e in span.events if e.name == "retina.drop"]
    node_drop_total = 0
    for attrs, span in by_port[dropped_port]:
        drops = [e for e in span.events if e.name == "retina.drop"]
        assert drops, (attrs, span.events)
        reasons = {a.value.string_value for e in drops for a in e.attributes if a.key == "retina.drop.reason"}
        assert reasons == {"NETFILTER_DROP"}
        node_drop_total = sum(a.value.int_value for e in drops for a in e.attributes if a.key == "retina.drop.packets")
        assert attrs["retina.drop.count"] == node_drop_total
        assert span.status.code == 2 and "packets dropped (NETFILTER_DROP)" in span.status.message
        assert attrs["retina.flow.verdict"] == "dropped"
        assert span.start_time_unix_nano - SLACK_NS <= min(e.time_unix_nano for e in drops)  # jiffy clock
        assert [e for e in span.events if e.name == "retina.tcp.retransmit"], "tcpretrans saw the retransmissions"
    assert node_drop_total == nft_dropped
    assert node.spans.open_connections == 0


def test_dns_query_gives_a_dns_span_with_its_latency(
    make_node: Any, client_server: tuple[Pod, Pod], sink: OtlpSink
) -> None:
    client, server = client_server
    proc = start_dnsmasq(server, 53)
    try:
        node = make_node(
            {
                "traces": [{"captureLevel": "FirstPacket", "includeLayer7Data": True, "traceTargets": WHOLE_RANGE}],
                "idle_timeout": 1.0,
            },
            [client, server],
        )
        query = dns.message.make_query("www.example.test", "A")
        with client.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind((client.ipv4, 0))
            t0 = time.time_ns()
            dns.query.udp(query, server.ipv4, port=53, timeout=3, sock=sock)
            t1 = time.time_ns()
            port = sock.getsockname()[1]
    finally:
        stop(proc)

    def dns_spans() -> list[Any]:
        return [s for s in sink.spans() if s[2].name == "www.example.test."]

    assert wait_for(lambda: len(dns_spans()) == 1, timeout=15)
    _, attrs, span = dns_spans()[0]
    assert attrs["source.address"] == client.ipv4 and attrs["destination.port"] == 53
    assert attrs["dns.response_code"] == 0 and span.status.code == 0
    latency = span.end_time_unix_nano - span.start_time_unix_nano
    assert latency == attrs["dns.latency_us"] * 1000 and 0 < latency <= t1 - t0
    assert t0 - SLACK_NS <= span.start_time_unix_nano and span.end_time_unix_nano <= t1 + SLACK_NS

    # The UDP exchange's own spans (after the idle timeout) are in the same trace, the DNS span a child of
    # the client's. packetparser reports the datagrams at its next flush (report interval): flush now.
    node.pp.flush()

    def udp_spans() -> list[Any]:
        return [
            s
            for s in sink.spans()
            if s[1].get("network.transport") == "udp"
            and s[1].get("source.port") == port
            and s[1]["retina.span.close_reason"] == "idle"
        ]

    assert wait_for(lambda: len(udp_spans()) == 2, timeout=15)
    udp_client = next(s for _, _, s in udp_spans() if s.kind == CLIENT)
    assert udp_client.trace_id == span.trace_id and span.parent_span_id == udp_client.span_id


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as c:
        yield c


def test_traces_configuration_targeting_one_pod(
    make_node: Any, sandbox: Sandbox, cluster: EmulatedCluster, sink: OtlpSink
) -> None:
    client, web, db = sandbox.add_pod("client"), sandbox.add_pod("web"), sandbox.add_pod("db")
    for p, labels in ((client, {"app": "client"}), (web, {"app": "web"}), (db, {"app": "db"})):
        cluster.create("pods", k8s_pod(p.name, p.ipv4, node=NODE, labels=labels))
    cluster.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    cluster.create("tracesconfigurations", {
        "apiVersion": "retina.sh/v1alpha1", "kind": "TracesConfiguration", "metadata": {"name": "web-only"},
        "spec": {"traceConfiguration": [{"captureLevel": "FirstPacket", "traceTargets": [
            {"to": {"podSelector": {"matchLabels": {"app": "web"}}}}]}],
                 "outputConfiguration": {"destination": "opentelemetry"}},
    })  # fmt: skip
    kube = KubeClient.from_options(api_url=cluster.url)
    try:
        reconcile_traces_configurations(kube)  # the operator's validation: Accepted
    finally:
        kube.close()
    node = make_node(
        {"traces_configuration": {"enabled": True, "api_url": cluster.url}}, [client, web, db], k8s_url=cluster.url
    )
    assert wait_for(lambda: node.spans.tracing, timeout=15)
    servers = [Server(web, PORT), Server(db, PORT)]
    try:
        for target in (web, db):
            for _ in range(3):
                exchange(client, target.ipv4, PORT)
    finally:
        for srv in servers:
            srv.close()
    assert wait_for(lambda: len(spans_to(sink, PORT)) >= 6, timeout=15)
    time.sleep(2)
    got = spans_to(sink, PORT)
    assert len(got) == 6
    assert {attrs["destination.address"] for _, attrs, _ in got} == {web.ipv4}
    assert {attrs["destination.k8s.pod.name"] for _, attrs, _ in got} == {"web"}
    resources = {(r["service.name"], span.kind) for r, _, span in got}
    assert resources == {("client", CLIENT), ("web", SERVER)}
