"""packetparser's ``controlplane_networkobservability_parsed_packets_counter`` with real traffic.

The counter is the kernel's ``packets`` statistic: every packet the TC programs parsed and counted into
the connection table. Every such packet leaves the table inside exactly one flow record, so after a flush
the counter equals the packets summed over all records (the exact invariant), and a scripted UDP
exchange of ``n`` request/reply pairs between two sandbox pods adds ``4n`` (each packet crosses the
client's and the server's host-side veth) to whatever background traffic (IPv6 ND) the pods made.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest

from retina_otel.component import CreateSettings
from retina_otel.receivers.packetparser import FACTORY, PacketParserConfig
from retina_otel.receivers.packetparser.receiver import PARSED_PACKETS, PacketParserReceiver
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost

pytestmark = pytest.mark.kernel


@pytest.fixture
def receivers() -> Iterator[list[PacketParserReceiver]]:
    made: list[PacketParserReceiver] = []
    yield made
    for r in made:
        r.shutdown()


def _parsed(host: TestHost) -> float:
    family = host.metrics.get(PARSED_PACKETS)
    assert family is not None
    value = family.value(())
    assert isinstance(value, float)
    return value


def _udp_exchange(client: Pod, server: Pod, n: int, ipv6: bool) -> None:
    cip = client.ipv6 if ipv6 else client.ipv4
    sip = server.ipv6 if ipv6 else server.ipv4
    assert cip and sip
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    with server.entered():
        srv = socket.socket(family, socket.SOCK_DGRAM)
        srv.bind((sip, 15363))
    with client.entered():
        c = socket.socket(family, socket.SOCK_DGRAM)
        c.bind((cip, 15364))
    try:
        for i in range(n):
            c.sendto(b"p" * (10 + i % 40), (sip, 15363))
            data, peer = srv.recvfrom(2048)
            srv.sendto(data, peer)
            c.recvfrom(2048)
    finally:
        c.close()
        srv.close()


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("aggregation", ["low", "high"])
def test_parsed_packets_counter(
    sandbox: Sandbox, receivers: list[PacketParserReceiver], aggregation: str, ipv6: bool
) -> None:
    client, server = sandbox.add_pod("cli"), sandbox.add_pod("srv")
    cfg = PacketParserConfig(interfaces=(f"ro{sandbox.token}*",), host_interface="none", aggregation=aggregation)  # type: ignore[arg-type]
    consumer = CollectingConsumer()
    host = TestHost()
    receiver = FACTORY.create(CreateSettings("packetparser", "receiver"), cfg, consumer)
    assert isinstance(receiver, PacketParserReceiver)
    receivers.append(receiver)
    receiver.start(host)
    assert _parsed(host) == 0.0  # declared at start, before any packet

    n = 200
    _udp_exchange(client, server, n, ipv6)
    # flush() reports every counter in the table and publishes the statistics. A background packet
    # (IPv6 neighbour discovery) between the two can make them differ by a few: flush again until one
    # round saw nothing new, then the invariant is exact.
    for _ in range(20):
        receiver.flush()
        before = _parsed(host)
        receiver.flush()
        if _parsed(host) == before:
            break
    parsed = _parsed(host)
    stats = receiver.kernel_stats()
    assert parsed == stats["packets"]
    assert stats["conntrack_full"] == 0
    records = consumer.records()
    assert parsed == int(records["packets"].sum())
    assert parsed >= 4 * n
    # The exchange's own share is exact: n requests and n replies, each at both veths.
    ours = (records["proto"] == 17) & np.isin(records["src_port"], (15363, 15364))
    assert int(records["packets"][ours].sum()) == 4 * n
