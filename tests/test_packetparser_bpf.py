"""The packetparser BPF program on crafted packets through BPF_PROG_TEST_RUN.

Low aggregation, so every accepted packet produces exactly one ring-buffer report, which we read back
with the receiver's own reader. Rejected packets must produce no report and bump one statistic.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from retina_otel.bpf import load_bpf
from retina_otel.flows import Direction, Event, ObservationPoint, TcpFlag, Verdict, bytes_to_ip
from retina_otel.receivers.packetparser import PacketParserConfig
from retina_otel.receivers.packetparser.kernel import RingBufReader, prog_test_run
from retina_otel.receivers.packetparser.receiver import BPF_SOURCE, build_cflags
from retina_otel.receivers.packetparser.records import RINGBUF_RECORD_DTYPE, STAT_NAMES

pytestmark = pytest.mark.kernel

TC_ACT_UNSPEC = 0xFFFFFFFF


class Harness:
    def __init__(self, bpf: Any, cfg: PacketParserConfig) -> None:
        from bcc import BPF

        self.bpf = bpf
        self.fd = bpf.load_func(b"pp_from_endpoint", BPF.SCHED_CLS).fd
        self.ring = RingBufReader(bpf["events"].map_fd, cfg.ring_buffer_size, RINGBUF_RECORD_DTYPE)

    def stats(self) -> dict[str, int]:
        table = self.bpf["stats"]
        return {n: int(sum(table[ctypes.c_int(i)])) for i, n in enumerate(STAT_NAMES)}

    def run(self, frame: bytes) -> tuple[np.ndarray, dict[str, int]]:
        """Reports produced by one frame and the statistics that changed."""
        before = self.stats()
        res = prog_test_run(self.fd, frame)
        assert res.retval == TC_ACT_UNSPEC  # never changes a packet's fate
        after = self.stats()
        reports = self.ring.read()["report"]
        return reports, {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    cfg = PacketParserConfig(aggregation="low", ring_buffer_size=1 << 16)
    bpf = load_bpf(BPF_SOURCE, build_cflags(cfg))  # the verifier accepts every program here
    h = Harness(bpf, cfg)
    try:
        yield h
    finally:
        h.ring.close()
        bpf.cleanup()


def _one(reports: np.ndarray) -> np.void:
    assert reports.shape[0] == 1, reports
    return reports[0]


def test_ipv4_tcp_flags(harness: Harness) -> None:
    pkt = Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=1234, dport=80, flags="S")
    r = _one(harness.run(bytes(pkt))[0])
    assert str(bytes_to_ip(r["src"])) == "198.18.0.1" and str(bytes_to_ip(r["dst"])) == "198.18.0.2"
    assert (r["sport"], r["dport"], r["proto"], r["ipver"]) == (1234, 80, 6, 4)
    assert r["packets"] == 1 and r["bytes"] == 40
    assert r["flags"][TcpFlag.SYN] == 1 and r["flags"][TcpFlag.ACK] == 0 and r["is_reply"] == 0
    synack = Ether() / IP(src="198.18.0.2", dst="198.18.0.1") / TCP(sport=80, dport=1234, flags="SAE")
    r = _one(harness.run(bytes(synack))[0])
    assert r["is_reply"] == 1
    assert r["flags"][TcpFlag.SYNACK] == 1 and r["flags"][TcpFlag.SYN] == 0 and r["flags"][TcpFlag.ECE] == 1


def test_each_observation_point_reports_its_direction(harness: Harness) -> None:
    """The kernel writes direction (from the observation point), verdict and event into the report itself."""
    from bcc import BPF

    want = {
        "pp_from_endpoint": (ObservationPoint.FROM_ENDPOINT, Direction.EGRESS),
        "pp_to_endpoint": (ObservationPoint.TO_ENDPOINT, Direction.INGRESS),
        "pp_from_network": (ObservationPoint.FROM_NETWORK, Direction.INGRESS),
        "pp_to_network": (ObservationPoint.TO_NETWORK, Direction.EGRESS),
    }
    for i, (name, (obs, direction)) in enumerate(want.items()):
        fd = harness.bpf.load_func(name.encode(), BPF.SCHED_CLS).fd
        pkt = Ether() / IP(src="198.18.1.1", dst="198.18.1.2") / UDP(sport=7000 + i, dport=9) / b"x"
        assert prog_test_run(fd, bytes(pkt)).retval == TC_ACT_UNSPEC
        r = _one(harness.ring.read()["report"])
        assert (r["obs"], r["direction"], r["verdict"], r["event"]) == (obs, direction, Verdict.FORWARDED, Event.FLOW)
        assert (r["sport"], r["packets"], r["bytes"], r["sampled"]) == (7000 + i, 1, 29, 0)


def test_ipv4_options(harness: Harness) -> None:
    pkt = (
        Ether()
        / IP(src="198.18.0.3", dst="198.18.0.4", options=[IPOption_RR(length=11)])
        / UDP(sport=53, dport=5353)
        / (b"z" * 13)
    )
    assert IP(bytes(pkt)[14:]).ihl > 5
    r = _one(harness.run(bytes(pkt))[0])
    assert (r["sport"], r["dport"], r["proto"]) == (53, 5353, 17)
    assert r["bytes"] == len(bytes(pkt)) - 14


@pytest.mark.parametrize(
    "exts",
    [
        [IPv6ExtHdrHopByHop()],
        [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(addresses=["2001:db8::9"])],
        [IPv6ExtHdrFragment(offset=0, m=1, id=7)],
    ],
    ids=["hbh", "hbh-dst-rt", "first-fragment"],
)
def test_ipv6_extension_headers(harness: Harness, exts: list[Any]) -> None:
    layer: Any = IPv6(src="2001:db8::1", dst="2001:db8::2")
    for e in exts:
        layer = layer / e
    pkt = Ether() / layer / TCP(sport=4321, dport=443, flags="PA") / b"data"
    r = _one(harness.run(bytes(pkt))[0])
    assert (r["sport"], r["dport"], r["proto"], r["ipver"]) == (4321, 443, 6, 6)
    assert r["bytes"] == len(bytes(pkt)) - 14
    assert r["flags"][TcpFlag.PSH] == 1


def test_non_first_fragments_have_no_ports(harness: Harness) -> None:
    v6 = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(offset=10, nh=17) / (b"q" * 16)
    r = _one(harness.run(bytes(v6))[0])
    assert (r["sport"], r["dport"], r["proto"]) == (0, 0, 17)
    v4 = Ether() / IP(src="198.18.0.5", dst="198.18.0.6", frag=5, proto=17) / (b"q" * 16)
    r = _one(harness.run(bytes(v4))[0])
    assert (r["sport"], r["dport"], r["proto"]) == (0, 0, 17)


@pytest.mark.parametrize("tags", [1, 2], ids=["802.1q", "802.1ad+802.1q"])
def test_vlan(harness: Harness, tags: int) -> None:
    l2: Any = Ether() / Dot1Q(vlan=10) if tags == 1 else Ether() / Dot1AD(vlan=20) / Dot1Q(vlan=10)
    pkt = l2 / IP(src="198.18.0.7", dst="198.18.0.8") / UDP(sport=1, dport=2) / b"abc"
    r = _one(harness.run(bytes(pkt))[0])
    assert (r["sport"], r["dport"], r["proto"]) == (1, 2, 17)
    assert r["bytes"] == 31


def test_icmp_echo_pairs_into_one_connection(harness: Harness) -> None:
    req = Ether() / IP(src="198.18.0.9", dst="198.18.0.10") / ICMP(type=8, id=99) / (b"p" * 8)
    rep = Ether() / IP(src="198.18.0.10", dst="198.18.0.9") / ICMP(type=0, id=99) / (b"p" * 8)
    a = _one(harness.run(bytes(req))[0])
    b = _one(harness.run(bytes(rep))[0])
    assert (a["sport"], a["dport"], a["is_reply"]) == (8, 0, 0)
    assert (b["sport"], b["dport"], b["is_reply"]) == (0, 0, 1)


_TCP_DOFF2 = b"\x00" * 12 + b"\x20" + b"\x00" * 7  # a 20-byte TCP header claiming 8 bytes


def _trunc(pkt: Any, keep: int) -> bytes:
    return bytes(pkt)[:keep]


@pytest.mark.parametrize(
    ("frame", "stat"),
    [
        # BPF_PROG_TEST_RUN refuses IP ethertypes shorter than their header, so these ride in a VLAN tag.
        (bytes(Ether() / Dot1Q(type=0x0800)), "truncated_ip"),
        (bytes(Ether() / Dot1Q(vlan=1))[:16], "truncated_l2"),
        (_trunc(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(), 14 + 20 + 10), "truncated_l4"),
        (_trunc(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(), 14 + 20 + 4), "truncated_l4"),
        (_trunc(Ether() / IP(src="198.18.0.1", dst="198.18.0.2", ihl=15, len=68) / UDP(), 14 + 30), "truncated_ip"),
        (bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2", ihl=4) / UDP()), "malformed_ip"),
        (bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2", len=24) / TCP()), "truncated_l4"),
        (
            bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2", proto=6) / (b"\x00" * 12 + b"\x20" + b"\x00" * 7)),
            "malformed_l4",
        ),
        (_trunc(Ether() / Dot1Q() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(), 18 + 30), "truncated_ip"),
        (
            _trunc(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP(), 14 + 40 + 3),
            "truncated_ipv6_extension",
        ),
        (
            bytes(
                Ether()
                / IPv6(src="2001:db8::1", dst="2001:db8::2")
                / IPv6ExtHdrHopByHop()
                / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt()
                / UDP()
            ),
            "ipv6_extension_limit",
        ),
        (bytes(Ether() / ARP()), "not_ip"),
    ],
    ids=[
        "eth-only",
        "vlan-cut",
        "tcp-cut",
        "udp-cut",
        "ipv4-options-cut",
        "ipv4-ihl4",
        "ipv4-len-short",
        "tcp-doff2",
        "ipv6-cut",
        "ipv6-ext-cut",
        "ipv6-ext-limit",
        "arp",
    ],
)
def test_rejected_frames_are_counted_not_parsed(harness: Harness, frame: bytes, stat: str) -> None:
    reports, changed = harness.run(frame)
    assert reports.shape[0] == 0
    assert changed == {stat: 1}
