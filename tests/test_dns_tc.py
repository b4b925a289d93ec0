"""dns with its TC source: packetparser's programs hand DNS-port packets to the dns receiver's programs by
tail call (the ``dns_chain`` extension). Real dnsmasq, real traffic between sandbox pods: counts, rcodes,
answers and latencies exact as with the socket source, each message once across both veths, and
packetparser's own counts unchanged by the chain. Crafted frames through BPF_PROG_TEST_RUN show that the
fast path never counts a DNS packet in its flow cache (so the chain always runs)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from retina_otel.bpf.chain import OBSERVATION_POINTS, PendingChain, ProgramChain
from retina_otel.component import CreateSettings
from retina_otel.flows import ip_to_bytes
from retina_otel.receivers.dns import FACTORY as DNS_FACTORY
from retina_otel.receivers.dns import DnsConfig, DnsReceiver
from retina_otel.receivers.packetparser import FACTORY as PP_FACTORY
from retina_otel.receivers.packetparser import PacketParserConfig
from retina_otel.receivers.packetparser.kernel import prog_test_run
from retina_otel.receivers.packetparser.receiver import PacketParserReceiver
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost, wait_for
from tests.test_dns import (
    _check_rows,
    _counter,
    check_latencies_and_no_loss,
    flush_until_answered,
    run_queries,
    start_dnsmasq,
    stop,
)

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
REQUESTS = "networkobservability_dns_request_count"


def test_pending_chain_applies_plugs_when_bound() -> None:
    chain = PendingChain()
    assert isinstance(chain, ProgramChain) and not chain.available()
    slots: dict[int, int | None] = {}

    def writer(index: int, fd: int | None) -> None:
        slots[index] = fd

    chain.plug({"from_endpoint": 11, "to_network": 14})  # before the offering side loaded
    assert slots == {}
    chain.bind(writer)
    assert chain.available() and slots == {0: 11, 1: None, 2: None, 3: 14}
    chain.plug({p: 20 + i for i, p in enumerate(OBSERVATION_POINTS)})
    assert slots == {0: 20, 1: 21, 2: 22, 3: 23}
    chain.unbind()
    chain.unplug()  # the offering side is gone: nothing to write, no error
    assert not chain.available() and slots == {0: 20, 1: 21, 2: 22, 3: 23} and chain.plugged() == {}
    with pytest.raises(ValueError, match="unknown observation points"):
        chain.plug({"sideways": 1})


class Node:
    """packetparser and dns on one TestHost that carries packetparser's extensions, as the agent does."""

    def __init__(self, pp_config: PacketParserConfig, dns_config: DnsConfig) -> None:
        self.pp_consumer, self.dns_consumer = CollectingConsumer(), CollectingConsumer()
        pp = PP_FACTORY.create(CreateSettings("packetparser", "receiver"), pp_config, self.pp_consumer)
        dns_rcv = DNS_FACTORY.create(CreateSettings("dns", "receiver"), dns_config, self.dns_consumer)
        assert isinstance(pp, PacketParserReceiver) and isinstance(dns_rcv, DnsReceiver)
        self.pp, self.dns = pp, dns_rcv
        self.host = TestHost(extensions=pp.extensions())

    def shutdown(self) -> None:
        for component in (self.pp, self.dns):  # packetparser first: dns is still plugged then
            with contextlib.suppress(Exception):
                component.shutdown()


@pytest.fixture
def make_node() -> Iterator[Any]:
    made: list[Node] = []

    def make(pp_config: PacketParserConfig, dns_config: DnsConfig) -> Node:
        node = Node(pp_config, dns_config)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.shutdown()


def _dns_frames() -> list[tuple[bytes, tuple[str, str, int, int, int]]]:
    """DNS queries the fast path would cache if they were not DNS (same flow repeated), and their flows."""
    wire = dns.message.make_query("www.example.test", "A").to_wire()
    length = len(wire).to_bytes(2, "big")
    v4 = ("198.18.9.1", "198.18.9.2")
    v6 = ("2001:db8:9::1", "2001:db8:9::2")
    return [
        (bytes(ETH / IP(src=v4[0], dst=v4[1]) / UDP(sport=30001, dport=53) / wire), (*v4, 30001, 53, 17)),
        (bytes(ETH / IPv6(src=v6[0], dst=v6[1]) / UDP(sport=30002, dport=5353) / wire), (*v6, 30002, 5353, 17)),
        (
            bytes(ETH / IP(src=v4[0], dst=v4[1]) / TCP(sport=30003, dport=53, flags="PA") / (length + wire)),
            (*v4, 30003, 53, 6),
        ),
    ]


def _packets_by_flow(records: np.ndarray) -> dict[tuple[str, str, int, int, int], int]:
    from retina_otel.flows import bytes_to_ip

    out: dict[tuple[str, str, int, int, int], int] = {}
    for r in records:
        key = (
            str(bytes_to_ip(bytes(r["src_ip"]))),
            str(bytes_to_ip(bytes(r["dst_ip"]))),
            int(r["src_port"]),
            int(r["dst_port"]),
            int(r["proto"]),
        )
        out[key] = out.get(key, 0) + int(r["packets"])
    return out


@pytest.mark.kernel
def test_fast_path_hands_every_dns_packet_to_the_chain(make_node: Any) -> None:
    """Five copies of each DNS frame through the fast-path entry: all five reach the dns programs (none is
    counted in the flow cache), packetparser counts all five, and a repeated non-DNS flow still hits the
    cache. dns starts first (its plug waits for packetparser), and packetparser stops first."""
    node = make_node(
        PacketParserConfig(interfaces=("retina-otel-none-*",), host_interface="none", aggregation="high"),
        DnsConfig(interval=3600, source="auto"),
    )
    node.dns.start(node.host)
    assert node.dns.source == "tc"
    chain = node.host.get_extension("dns_chain")
    assert isinstance(chain, ProgramChain) and not chain.available()
    node.pp.start(node.host)
    assert chain.available()
    entry = node.pp.entry_program_fd("from_endpoint")
    assert entry != node.pp._fds["pp_from_endpoint"]  # the fast path is what is attached
    frames = _dns_frames()
    other = bytes(ETH / IP(src="198.18.9.1", dst="198.18.9.2") / UDP(sport=30004, dport=4000) / (b"x" * 20))
    for frame, _flow in frames:
        for _ in range(5):
            prog_test_run(entry, frame)
    for _ in range(5):
        prog_test_run(entry, other)
    # the reader thread wakes on the ring buffer's fd
    assert wait_for(lambda: node.dns.packets_read == 5 * len(frames), timeout=5), node.dns.packets_read
    node.dns.flush()
    assert _counter(node.host, REQUESTS) == 5 * len(frames)
    node.pp.flush()
    stats = node.pp.kernel_stats()
    assert stats["tail_call_failed"] == 0
    assert stats["flow_cache_hits"] == 4  # the non-DNS flow's repeats only
    by_flow = _packets_by_flow(node.pp_consumer.records())
    for _frame, flow in frames:
        assert by_flow[flow] == 5, (flow, by_flow)
    assert by_flow[("198.18.9.1", "198.18.9.2", 30004, 4000, 17)] == 5

    # dns gone: the chain is empty, packets pass and are counted, no tail call is counted as failed.
    node.dns.shutdown()
    for _ in range(3):
        prog_test_run(entry, frames[0][0])
    node.pp.flush()
    assert node.pp.kernel_stats()["tail_call_failed"] == 0
    assert _packets_by_flow(node.pp_consumer.records())[frames[0][1]] == 8


@pytest.mark.kernel
def test_without_packetparser_tc_attaches_its_own_programs_and_removes_them() -> None:
    """`auto` and `tc` without packetparser: the receiver's programs sit on the host interface (and pod
    veths) themselves; shutdown leaves nothing attached. `socket` stays a socket."""
    from pyroute2 import IPRoute

    from retina_otel.bpf.directchain import DirectChain
    from retina_otel.bpf.links import default_route_ifindexes

    with IPRoute() as ipr:
        host = default_route_ifindexes(ipr)

    for source in ("auto", "tc"):
        rcv = DnsReceiver(CreateSettings("dns", "receiver"), DnsConfig(interval=3600, source=source), None)  # type: ignore[arg-type]
        try:
            rcv.start(TestHost())
            assert rcv.source == "tc"
            chain = rcv.chain
            assert isinstance(chain, DirectChain) and chain.available()
            assert set(host) <= set(chain.attached_interfaces())
        finally:
            rcv.shutdown()
        assert not chain.available()
    sock = DnsReceiver(CreateSettings("dns", "receiver"), DnsConfig(interval=3600, source="socket"), None)
    try:
        sock.start(TestHost())
        assert sock.source == "socket"
    finally:
        sock.shutdown()


@pytest.mark.kernel
@pytest.mark.parametrize(("port", "restrict"), [(53, False), (5353, True)])
def test_dnsmasq_through_packetparser(
    make_node: Any, sandbox: Sandbox, client_server: tuple[Pod, Pod], port: int, restrict: bool
) -> None:
    """Queries over UDP and TCP, IPv4 and IPv6, seen by packetparser at both pods' veths: the dns receiver
    counts each message once (FROM_ENDPOINT copies only, as neither pod address is the node's), with the
    same exact counts, rcodes, answers and latencies as the socket source; packetparser's rows for the DNS
    flows hold exactly the packets sent."""
    client, server = client_server
    proc = start_dnsmasq(server, port)
    try:
        interfaces = (client.host_veth, server.host_veth) if restrict else ()
        node = make_node(
            PacketParserConfig(interfaces=(f"ro{sandbox.token}*",), host_interface="none", aggregation="high"),
            DnsConfig(interval=3600, source="tc", interfaces=interfaces),
        )
        node.pp.start(node.host)  # the default config's order
        node.dns.start(node.host)
        assert node.dns.source == "tc"
        wanted = {client.host_ifindex, server.host_ifindex}
        assert wait_for(lambda: wanted <= set(node.pp.attached_interfaces()), timeout=5)

        seen = run_queries(client, server, port, repeat=2)
        n = len(seen)
        assert n == 2 * 2 * 2 * 3

        flush_until_answered(node.dns, node.host, n)
        _check_rows(node.dns_consumer, client, seen, port)
        check_latencies_and_no_loss(node.host, n)

        node.pp.flush()
        rec = node.pp_consumer.records()
        dns_rows = rec[(rec["src_port"] == port) | (rec["dst_port"] == port)]
        udp = dns_rows[dns_rows["proto"] == 17]
        n_udp = sum(1 for s in seen if not s["tcp"])
        for pod in (client, server):
            at = udp[udp["ifindex"] == pod.host_ifindex]
            # every UDP query is one datagram in a flow of its own, and so is its response
            assert int(at["packets"].sum()) == 2 * n_udp, (pod.name, at[["src_port", "dst_port", "packets"]])
        tcp = dns_rows[dns_rows["proto"] == 6]
        per_veth = [int(tcp[tcp["ifindex"] == p.host_ifindex]["packets"].sum()) for p in (client, server)]
        assert per_veth[0] == per_veth[1] > 0  # the same segments cross both veths
        assert node.pp.kernel_stats()["tail_call_failed"] == 0
        cli = {ip_to_bytes(client.ipv4), ip_to_bytes(client.ipv6 or "::")}
        dns_rec = node.dns_consumer.records()
        assert sum(r["src_ip"].tobytes() in cli for r in dns_rec) == n  # each query once
    finally:
        stop(proc)


@pytest.mark.kernel
def test_node_querying_a_pod_is_taken_where_it_leaves_the_node(
    make_node: Any, sandbox: Sandbox, client_server: tuple[Pod, Pod]
) -> None:
    """The node itself asks a pod's server: its queries are seen only entering the server's veth
    (TO_ENDPOINT), taken because their source is one of the node's addresses (the kernel's dns_local map);
    the responses leave the pod (FROM_ENDPOINT). Each message once, latencies within the client's bound."""
    _client, server = client_server
    assert server.ipv6
    proc = start_dnsmasq(server, 53)
    try:
        node = make_node(
            PacketParserConfig(interfaces=(f"ro{sandbox.token}*",), host_interface="none", aggregation="high"),
            DnsConfig(interval=3600),
        )
        node.pp.start(node.host)
        node.dns.start(node.host)
        assert node.dns.source == "tc"
        assert wait_for(lambda: server.host_ifindex in node.pp.attached_interfaces(), timeout=5)
        bounds: list[int] = []
        for address in (server.ipv4, server.ipv6):
            for send in (dns.query.udp, dns.query.tcp):
                q = dns.message.make_query("www.example.test", "A")
                t0 = time.time_ns()
                send(q, address, port=53, timeout=3)
                bounds.append(time.time_ns() - t0)
        n = len(bounds)

        flush_until_answered(node.dns, node.host, n)
        rec = node.dns_consumer.records()
        assert set(rec["ifindex"].tolist()) == {server.host_ifindex}
        latencies = sorted(int(r["dns_latency_us"]) * 1000 for r in rec if r["dns_is_response"])
        assert len(latencies) == n and 0 < latencies[-1] <= max(bounds)
    finally:
        stop(proc)
