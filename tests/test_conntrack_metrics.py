"""Retina's conntrack_* gauges: read from the live connection table, not summed from records.

Two pods exchange TCP (counted by nft in the client) and UDP (exact by construction) with the agent
running; every path is warmed before it starts, so the table holds exactly these two connections, each
at two interfaces (the client's and the server's veth). The gauges must equal per-connection lifetime
totals (initiator direction = tx, reply = rx) summed over the table; emptying the table (what expiry
does) takes them to zero while the cumulative packetparser_* counters stay.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retina_otel.component import CreateSettings
from retina_otel.receivers.packetparser import FACTORY, PacketParserConfig
from retina_otel.receivers.packetparser.ctmetrics import connection_ids
from retina_otel.receivers.packetparser.receiver import PacketParserReceiver
from retina_otel.receivers.packetparser.records import CT_KEY_DTYPE
from retina_otel.sandbox import Sandbox
from retina_otel.testing import CollectingConsumer, TestHost, wait_for
from tests.test_e2e_metrics import count_table, nft, nft_counters, pings, tcp_exchange

pytestmark = pytest.mark.kernel

P = "networkobservability_"
UDP_PORT, TCP_PORT = 7500, 7501


@pytest.fixture(params=["low", "high"])
def running(
    sandbox: Sandbox, request: pytest.FixtureRequest
) -> Iterator[tuple[PacketParserReceiver, TestHost, Sandbox]]:
    client, server = sandbox.add_pod("cli", ipv6=False), sandbox.add_pod("srv", ipv6=False)
    # No IPv6 at all on these links: router solicitations and MLD reports of link-local addresses would be
    # connections in the table too, and they are sent at times the test does not control.
    for pod in (client, server):
        pod.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        Path(f"/proc/sys/net/ipv6/conf/{pod.host_veth}/disable_ipv6").write_text("1")
    for src, dst in ((client, server), (server, client)):
        assert wait_for(lambda s=src, d=dst: pings(s, d.ipv4))
    nft(client, count_table([server.ipv4]))
    host = TestHost()
    config = PacketParserConfig(interfaces=(f"ro{sandbox.token}*",), host_interface="none", aggregation=request.param)
    receiver = FACTORY.create(CreateSettings("packetparser", "receiver"), config, CollectingConsumer())
    assert isinstance(receiver, PacketParserReceiver)
    try:
        receiver.start(host)
        yield receiver, host, sandbox
    finally:
        receiver.shutdown()


def value(host: TestHost, name: str) -> float:
    family = host.metrics.get(P + name)
    assert family is not None, name
    found = family.value(())
    assert isinstance(found, float), name
    return found


def test_gauges_are_the_live_tables_lifetime_totals(running: tuple[PacketParserReceiver, TestHost, Sandbox]) -> None:
    receiver, host, sandbox = running
    client, server = sandbox.pods
    # UDP: 5 datagrams of 100 bytes each way (128 bytes at L3), the server answering each.
    with server.entered():
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with client.entered():
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with srv, cli:
        srv.bind((server.ipv4, UDP_PORT))
        srv.settimeout(5)
        cli.settimeout(5)
        for _ in range(5):
            cli.sendto(b"u" * 100, (server.ipv4, UDP_PORT))
            data, peer = srv.recvfrom(2048)
            srv.sendto(data, peer)
            cli.recv(2048)
    tcp_exchange(client, server, TCP_PORT, send=4000, reply=6000)
    receiver.flush()
    counted = nft_counters(client)
    out_p, out_b = counted["out_all"]  # every IP packet the client sent to the server: TCP + 5 UDP
    in_p, in_b = counted["in_all"]
    # Each connection is in the table at both veths, each packet counted at both (as Retina's conntrack
    # counts a packet at every hook it passes); the client initiated both connections.
    assert value(host, "conntrack_packets_tx") == 2 * out_p
    assert value(host, "conntrack_packets_rx") == 2 * in_p
    assert value(host, "conntrack_bytes_tx") == 2 * out_b
    assert value(host, "conntrack_bytes_rx") == 2 * in_b
    assert value(host, "conntrack_total_connections") == 2  # one TCP, one UDP, whatever the interfaces
    cumulative = value(host, "packetparser_packets_tx")
    assert cumulative == out_p + in_p  # leaving the client's pod + leaving the server's pod
    # What expiry does: the table empties. The gauges follow it; the cumulative counters do not.
    assert receiver._bpf is not None
    receiver._bpf["conntrack"].clear()
    receiver.flush()
    for name in ("packets_tx", "packets_rx", "bytes_tx", "bytes_rx", "total_connections"):
        assert value(host, "conntrack_" + name) == 0, name
    assert value(host, "packetparser_packets_tx") == cumulative


def test_connection_ids_ignore_the_interface() -> None:
    keys = np.zeros(4, dtype=CT_KEY_DTYPE)
    keys["ifindex"] = [3, 4, 3, 3]
    keys["pa"] = [1000, 1000, 1001, 1000]
    keys["proto"] = [6, 6, 6, 17]
    ids = connection_ids(keys)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3
