"""tcplatency: handshake latency, smoothed RTT and API-server metrics from real connections."""

from __future__ import annotations

import contextlib
import ctypes as ct
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from retina_otel.bpf.btf import BtfError, kernel_btf, require_tracepoint_args
from retina_otel.component import CreateSettings
from retina_otel.eventdemand import EventDemand
from retina_otel.extension_keys import TCP_LATENCY
from retina_otel.flows import FlowBatch, ip_to_bytes
from retina_otel.metrics.store import HistogramValue
from retina_otel.processors.tcplatency import FACTORY as PROCESSOR
from retina_otel.processors.tcplatency import TcpLatencyProcessor, annotate
from retina_otel.receivers.tcplatency import FACTORY, TcpLatencyReceiver
from retina_otel.receivers.tcplatency.receiver import TRACEPOINT_ARGS, bloom_bit
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def _started(*, track_flows: bool) -> Iterator[tuple[TcpLatencyReceiver, TestHost]]:
    r = FACTORY.create(
        CreateSettings("tcplatency", "receiver"),
        FACTORY.config_model(interval=3600, use_kubernetes_service_host=False),
        None,
    )
    assert isinstance(r, TcpLatencyReceiver)
    if track_flows:
        r.track_flows()  # as the tcplatency processor does before receivers start
    host = TestHost()
    r.start(host)
    try:
        yield r, host
    finally:
        r.shutdown()
        r.shutdown()  # idempotent


@pytest.fixture
def receiver() -> Iterator[tuple[TcpLatencyReceiver, TestHost]]:
    with _started(track_flows=True) as found:
        yield found


def _serve(server: Pod, port: int, count: int) -> tuple[threading.Thread, socket.socket]:
    with server.entered():
        listener = socket.socket()
    listener.bind((server.ipv4, port))
    listener.listen(64)

    def loop() -> None:
        for _ in range(count):
            conn, _ = listener.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"ok")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, listener


def _apiserver_traffic(sandbox: Sandbox, r: TcpLatencyReceiver, n: int) -> tuple[Pod, Pod, list[int], list[float]]:
    """n request/response connections to a pod named as the API server, one attempt it refuses and,
    to another pod, connections that must not count; then one read of the kernel tables."""
    client, apiserver, other = sandbox.add_pod("client"), sandbox.add_pod("apiserver"), sandbox.add_pod("other")
    r.set_apiserver_ips([apiserver.ipv4])
    thread, listener = _serve(apiserver, 6443, n)
    other_thread, other_listener = _serve(other, 8080, 2)
    connect_times: list[float] = []
    ports: list[int] = []
    for target, port in [(apiserver, 6443)] * n + [(other, 8080)] * 2:
        with client.entered():
            started = time.perf_counter()
            conn = socket.create_connection((target.ipv4, port), timeout=5)
            elapsed = time.perf_counter() - started
        if target is apiserver:
            connect_times.append(elapsed)
            ports.append(conn.getsockname()[1])
        with conn:
            conn.sendall(b"GET /healthz")
            conn.recv(10)
    for t, sock in ((thread, listener), (other_thread, other_listener)):
        t.join(timeout=10)
        sock.close()
    # An attempt the API server never answers with SYN/ACK (nothing listens: RST).
    with client.entered(), pytest.raises(ConnectionRefusedError):
        socket.create_connection((apiserver.ipv4, 6444), timeout=2)
    r.poll()
    return client, apiserver, ports, connect_times


def _assert_apiserver_histograms(host: TestHost, n: int, connect_times: list[float]) -> None:
    handshake = host.metrics.get("networkobservability_adv_node_apiserver_tcp_handshake_latency")
    assert handshake is not None
    value = handshake.value(())
    assert isinstance(value, HistogramValue)
    assert value.count == n
    # Whole milliseconds, never more than the connect() time the test measured.
    assert value.maximum <= round(max(connect_times) * 1000) + 1
    latency = host.metrics.get("networkobservability_adv_node_apiserver_latency")
    assert latency is not None
    lat = latency.value(())
    assert isinstance(lat, HistogramValue) and lat.count >= n  # at least the reply segment of each request
    no_response = host.metrics.get("networkobservability_adv_node_apiserver_no_response")
    assert no_response is not None and no_response.value(("no_response",)) == 1


def test_without_a_flow_consumer_only_apiserver_connections_are_followed(sandbox: Sandbox) -> None:
    """No track_flows() (the default config: nothing reads RTT on flow records): the histograms are
    exact all the same and the kernel keeps no per-flow entry."""
    with _started(track_flows=False) as (r, host):
        n = 5
        _client, _apiserver, _ports, connect_times = _apiserver_traffic(sandbox, r, n)
        _assert_apiserver_histograms(host, n, connect_times)
        assert len(r.table()) == 0  # the first call starts the table: nothing was kept before it


def test_handshakes_and_latency_to_the_apiserver(
    sandbox: Sandbox, receiver: tuple[TcpLatencyReceiver, TestHost]
) -> None:
    r, host = receiver
    n = 7
    client, apiserver, ports, connect_times = _apiserver_traffic(sandbox, r, n)
    _assert_apiserver_histograms(host, n, connect_times)

    # Every flow has its handshake and RTT in the table, found from either direction.
    table = r.table()
    src, dst = ip_to_bytes(client.ipv4), ip_to_bytes(apiserver.ipv4)
    for port, elapsed in zip(ports, connect_times, strict=True):
        found = table.lookup(src, dst, port, 6443)
        assert found is not None
        srtt_us, handshake_us = found
        assert 0 < handshake_us <= elapsed * 1e6 + 1000
        assert srtt_us > 0
        reverse = table.lookup(dst, src, 6443, port)  # the server's socket: its own RTT, the client's handshake
        assert reverse is not None and reverse[0] > 0 and reverse[1] == handshake_us

    # The processor puts them on flow records of those flows.
    batch = FlowBatch.empty(2)
    batch.records["proto"] = 6
    batch.records["src_ip"] = [src, dst]
    batch.records["dst_ip"] = [dst, src]
    batch.records["src_port"] = [ports[0], 6443]
    batch.records["dst_port"] = [6443, ports[0]]
    assert annotate(batch, table) == 2
    assert (batch.records["srtt_us"] > 0).all()
    assert (batch.records["handshake_us"] == table.lookup(src, dst, ports[0], 6443)[1]).all()  # type: ignore[index]


def test_other_destinations_do_not_count_as_apiserver(
    sandbox: Sandbox, receiver: tuple[TcpLatencyReceiver, TestHost]
) -> None:
    """Including an address that shares the API server's bit in the kernel's filter (apiserver_bloom): the
    filter only turns addresses away, the table decides."""
    r, host = receiver
    client, other = sandbox.add_pod("client"), sandbox.add_pod("other")
    r.set_apiserver_ips(["198.19.255.254", "2001:db8:ffff::1"])
    wanted = bloom_bit(ip_to_bytes(other.ipv4))
    twin = next(
        ip
        for i in range(1, 65536)
        if (ip := f"198.19.{i >> 8}.{i & 255}") != other.ipv4 and bloom_bit(ip_to_bytes(ip)) == wanted
    )
    r.set_apiserver_ips([twin])
    assert r._bpf["apiserver_bloom"][ct.c_int(0)].value == wanted  # the earlier addresses' bits are gone
    thread, listener = _serve(other, 8080, 3)
    for _ in range(3):
        with client.entered():
            conn = socket.create_connection((other.ipv4, 8080), timeout=5)
        with conn:
            conn.sendall(b"x")
            conn.recv(10)
    thread.join(timeout=10)
    listener.close()
    r.poll()
    handshake = host.metrics.get("networkobservability_adv_node_apiserver_tcp_handshake_latency")
    assert handshake is not None and handshake.value(()) is None
    assert len(r.table()) >= 3


def test_hooks_raw_tracepoints_checked_against_btf(receiver: tuple[TcpLatencyReceiver, TestHost]) -> None:
    r, _ = receiver
    bpf = r._bpf
    assert set(bpf.raw_tracepoint_fds) == {b"inet_sock_set_state", b"tcp_probe"}
    assert not bpf.tracepoint_fds  # no perf trace record is built per segment
    btf = kernel_btf()
    for name, args in TRACEPOINT_ARGS.items():
        require_tracepoint_args(btf, name, args)
    assert btf.tracepoint_args("tcp_probe") == ["struct sock *", "const struct sk_buff *"]
    with pytest.raises(BtfError, match="tcp_probe has arguments"):
        require_tracepoint_args(btf, "tcp_probe", ["struct sk_buff *"])


def test_ipv6_flow_and_apiserver_change_on_a_live_connection(
    sandbox: Sandbox, receiver: tuple[TcpLatencyReceiver, TestHost]
) -> None:
    """IPv6 keys from the socket; a flow re-decides its API-server flag when the addresses change."""
    r, host = receiver
    client, server = sandbox.add_pod("client"), sandbox.add_pod("server")
    assert client.ipv6 and server.ipv6
    r.set_apiserver_ips(["2001:db8:ffff::1"])
    with server.entered():
        listener = socket.socket(socket.AF_INET6)
    listener.bind((server.ipv6, 8443))
    listener.listen(1)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    with client.entered():
        conn = socket.create_connection((server.ipv6, 8443), timeout=5)
    thread.join(timeout=5)
    peer = accepted[0]

    def ping_pong(rounds: int) -> None:
        for _ in range(rounds):
            conn.sendall(b"ping")
            peer.recv(10)
            peer.sendall(b"pong")
            conn.recv(10)

    try:
        ping_pong(5)
        r.poll()
        latency = host.metrics.get("networkobservability_adv_node_apiserver_latency")
        assert latency is not None and latency.value(()) is None  # not an API server yet
        src, dst = ip_to_bytes(client.ipv6), ip_to_bytes(server.ipv6)
        port = conn.getsockname()[1]
        found = r.table().lookup(src, dst, port, 8443)
        assert found is not None and found[0] > 0 and found[1] > 0  # srtt and handshake, IPv6
        r.set_apiserver_ips([server.ipv6])  # the same connection now goes to the API server
        ping_pong(5)
        r.poll()
        value = latency.value(())
        assert isinstance(value, HistogramValue) and value.count >= 5  # the client's received segments
        handshake = host.metrics.get("networkobservability_adv_node_apiserver_tcp_handshake_latency")
        assert handshake is not None and handshake.value(()) is None  # its handshake was before
    finally:
        conn.close()
        peer.close()
        listener.close()


def test_the_processor_on_demand_joins_rtts_only_while_the_demand_is_held(sandbox: Sandbox) -> None:
    """The tcplatency processor given the agent's event demand (only the observer reads RTTs after it):
    the kernel keeps no per-flow entry while nobody holds the demand, the processor joins while a holder
    (a client following live flows) does, and both stop when it leaves."""
    demand = EventDemand()
    with _started(track_flows=False) as (r, _host):
        client, server = sandbox.add_pod("client"), sandbox.add_pod("server")
        out = CollectingConsumer()
        processor = PROCESSOR.create(
            CreateSettings("tcplatency", "processor", "logs", event_demand=demand), PROCESSOR.config_model(), out
        )
        assert isinstance(processor, TcpLatencyProcessor)
        processor.start(TestHost(extensions={TCP_LATENCY: r}))

        def connection(server_port: int) -> int:
            thread, listener = _serve(server, server_port, 1)  # a port each: the server's closes wait
            with client.entered():
                conn = socket.create_connection((server.ipv4, server_port), timeout=5)
            with conn:
                port = int(conn.getsockname()[1])
                conn.sendall(b"hello")
                conn.recv(10)
            thread.join(timeout=10)
            listener.close()
            r.poll()
            return port

        def srtt_on_record(flow: tuple[int, int]) -> int:
            port, server_port = flow
            batch = FlowBatch.empty(1)
            batch.records["proto"] = 6
            batch.records["src_ip"] = ip_to_bytes(client.ipv4)
            batch.records["dst_ip"] = ip_to_bytes(server.ipv4)
            batch.records["src_port"] = port
            batch.records["dst_port"] = server_port
            processor.consume_flows(batch)
            return int(out.records()["srtt_us"][-1])

        before = (connection(8080), 8080)
        assert srtt_on_record(before) == 0  # nobody follows: no per-flow table, no join
        with demand.hold():
            during = (connection(8081), 8081)
            assert srtt_on_record(during) > 0
            assert srtt_on_record(before) == 0  # the kernel never kept it
        after = (connection(8082), 8082)
        assert srtt_on_record(after) == 0 and srtt_on_record(during) == 0  # stopped with the last holder
        processor.shutdown()
