"""High aggregation's per-CPU flow cache, on crafted packets through BPF_PROG_TEST_RUN.

The receiver runs for real (its ring-buffer reader, cache sweep and flush), attached to no interface;
the packets go straight into ``pp_from_endpoint`` from both CPUs. More flows than cache slots, TCP flag
sequences in both directions, sweeps in the middle of a stream and report intervals passing must all
leave every flow's totals exact.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from retina_otel.component import CreateSettings
from retina_otel.flows import TcpFlag, bytes_to_ip
from retina_otel.receivers.packetparser import FACTORY, PacketParserConfig
from retina_otel.receivers.packetparser.kernel import prog_test_run
from retina_otel.receivers.packetparser.receiver import HOT_SLOTS, PacketParserReceiver
from retina_otel.testing import CollectingConsumer, TestHost

pytestmark = pytest.mark.kernel

# Explicit MACs: without them scapy resolves the destination with ARP for every frame it builds.
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

FlowId = tuple[str, str, int, int, int]  # src, dst, sport, dport, proto

_SCAPY_FLAGS = {
    TcpFlag.FIN: "F",
    TcpFlag.SYN: "S",
    TcpFlag.RST: "R",
    TcpFlag.PSH: "P",
    TcpFlag.ACK: "A",
    TcpFlag.URG: "U",
    TcpFlag.ECE: "E",
    TcpFlag.CWR: "C",
}


class Expected:
    """What the rows must add up to, per directed flow."""

    def __init__(self) -> None:
        self.packets: dict[FlowId, int] = defaultdict(int)
        self.bytes: dict[FlowId, int] = defaultdict(int)
        self.flags: dict[FlowId, np.ndarray] = defaultdict(lambda: np.zeros(len(TcpFlag), dtype=np.int64))

    def add(self, fid: FlowId, ip_len: int, flags: tuple[TcpFlag, ...] = ()) -> None:
        self.packets[fid] += 1
        self.bytes[fid] += ip_len
        for f in flags:
            self.flags[fid][f] += 1


class Driver:
    def __init__(self, receiver: PacketParserReceiver, consumer: CollectingConsumer) -> None:
        self.receiver = receiver
        self.consumer = consumer
        self.fd = receiver._fds["pp_from_endpoint"]
        self.cpus = sorted(os.sched_getaffinity(0))

    def send(self, frames: list[bytes], spread: bool = True) -> None:
        """Run the program once per frame, alternating CPUs every few frames when ``spread``."""
        original = os.sched_getaffinity(0)
        try:
            for i, frame in enumerate(frames):
                if spread and i % 7 == 0:
                    os.sched_setaffinity(0, {self.cpus[(i // 7) % len(self.cpus)]})
                prog_test_run(self.fd, frame)
        finally:
            os.sched_setaffinity(0, original)

    def totals(self) -> dict[str, dict[FlowId, Any]]:
        rec = self.consumer.records()
        out: dict[str, dict[FlowId, Any]] = {"packets": defaultdict(int), "bytes": defaultdict(int), "rows": {}}
        flags: dict[FlowId, np.ndarray] = defaultdict(lambda: np.zeros(len(TcpFlag), dtype=np.int64))
        rows: dict[FlowId, int] = defaultdict(int)
        for r in rec:
            fid = (
                str(bytes_to_ip(bytes(r["src_ip"]))),
                str(bytes_to_ip(bytes(r["dst_ip"]))),
                int(r["src_port"]),
                int(r["dst_port"]),
                int(r["proto"]),
            )
            out["packets"][fid] += int(r["packets"])
            out["bytes"][fid] += int(r["bytes"])
            flags[fid] += r["tcp_flags"].astype(np.int64)
            rows[fid] += 1
        out["flags"] = flags
        out["rows"] = rows
        return out


@pytest.fixture
def make_driver() -> Iterator[Any]:
    started: list[PacketParserReceiver] = []

    def make(**cfg: Any) -> Driver:
        consumer = CollectingConsumer()
        config = PacketParserConfig(
            interfaces=("retina-otel-none-*",), host_interface="none", aggregation="high", **cfg
        )
        r = FACTORY.create(CreateSettings("packetparser", "receiver"), config, consumer)
        assert isinstance(r, PacketParserReceiver)
        r.start(TestHost())
        started.append(r)
        return Driver(r, consumer)

    try:
        yield make
    finally:
        for r in started:
            with contextlib.suppress(Exception):
                r.shutdown()


def _udp_frame(src: str, dst: str, sport: int, dport: int, payload: int) -> tuple[bytes, int]:
    if ":" in src:
        pkt = ETH / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / (b"u" * payload)
        return bytes(pkt), 40 + 8 + payload
    pkt = ETH / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / (b"u" * payload)
    return bytes(pkt), 20 + 8 + payload


def _assert_exact(driver: Driver, want: Expected) -> None:
    got = driver.totals()
    missing = [f for f in want.packets if got["packets"].get(f, 0) != want.packets[f]]
    assert not missing, [(f, want.packets[f], got["packets"].get(f)) for f in missing[:5]]
    assert set(got["packets"]) == set(want.packets), set(got["packets"]) ^ set(want.packets)
    for fid in want.packets:
        assert got["bytes"][fid] == want.bytes[fid], fid
        assert (got["flags"][fid] == want.flags[fid]).all(), (fid, got["flags"][fid], want.flags[fid])


@pytest.mark.parametrize("report_interval", [30.0, 0.05])
def test_many_udp_flows_on_both_cpus_exact(make_driver: Any, report_interval: float) -> None:
    """3x more flows than cache slots (collisions, take-overs), IPv4 and IPv6, a sweep mid-stream; with a
    short report interval the reader thread also sweeps and flushes while packets are counted."""
    driver = make_driver(report_interval=report_interval)
    rng = random.Random(7)
    want = Expected()
    templates: list[tuple[bytes, int, FlowId]] = []
    for i in range(3 * HOT_SLOTS):
        if i % 5 == 0:
            src, dst = f"2001:db8::{i % 200 + 1:x}", f"2001:db8:1::{i // 200 + 1:x}"
        else:
            src, dst = f"198.18.{i // 250}.{i % 250 + 1}", f"198.19.0.{i % 7 + 1}"
        sport, dport = 10000 + i, 5000 + i % 3
        frame, ip_len = _udp_frame(src, dst, sport, dport, 10 + i % 50)
        templates.append((frame, ip_len, (src, dst, sport, dport, 17)))
    # A few heavy flows (they live in the cache) among many light ones (they take the slow path).
    weights = [40 if i % 97 == 0 else 1 for i in range(len(templates))]
    picks = rng.choices(range(len(templates)), weights=weights, k=30_000)
    frames = []
    for p in picks:
        frame, ip_len, fid = templates[p]
        frames.append(frame)
        want.add(fid, ip_len)
    driver.send(frames[:17_000])
    driver.receiver.flush()  # sweeps both halves of the cache while flows are mid-stream
    driver.send(frames[17_000:])
    driver.receiver.flush()
    _assert_exact(driver, want)
    stats = driver.receiver.kernel_stats()
    assert stats["packets"] == 30_000
    assert 0 < stats["flow_cache_hits"] < 30_000
    assert stats["conntrack_full"] == 0 and stats["ringbuf_full"] == 0


def _tcp_frame(src: str, dst: str, sport: int, dport: int, flags: tuple[TcpFlag, ...], payload: int) -> bytes:
    f = "".join(_SCAPY_FLAGS[x] for x in flags)
    return bytes(ETH / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=f) / (b"t" * payload))


def test_tcp_conversations_flags_and_directions_exact(make_driver: Any) -> None:
    """Interleaved connections: handshake, data and ACKs both ways, FINs; per-direction flag counts."""
    driver = make_driver()
    rng = random.Random(11)
    want = Expected()
    convs: list[list[bytes]] = []
    A, P, S, F = TcpFlag.ACK, TcpFlag.PSH, TcpFlag.SYN, TcpFlag.FIN
    for c in range(300):
        cli, srv = f"198.18.1.{c % 200 + 1}", f"198.18.2.{c // 200 + 1}"
        cport, sport = 30000 + c, 443
        fwd, rev = (cli, srv, cport, sport, 6), (srv, cli, sport, cport, 6)
        steps: list[tuple[FlowId, tuple[TcpFlag, ...], int]] = [(fwd, (S,), 0), (rev, (TcpFlag.SYNACK, A), 0)]
        steps.append((fwd, (A,), 0))
        for k in range(rng.randint(1, 25)):
            steps.append((fwd, (P, A) if k % 3 else (A,), 100 + k))
            steps.append((rev, (A,), 0))
            if k % 4 == 0:
                steps.append((rev, (P, A), 500))
        steps += [(fwd, (F, A), 0), (rev, (F, A), 0), (fwd, (A,), 0)]
        frames = []
        for fid, flags, payload in steps:
            scapy_flags = tuple(f for f in flags if f != TcpFlag.SYNACK) or ()
            if TcpFlag.SYNACK in flags:
                scapy_flags = (S, A)
            frames.append(_tcp_frame(fid[0], fid[1], fid[2], fid[3], scapy_flags, payload))
            counted = (TcpFlag.SYNACK, A) if TcpFlag.SYNACK in flags else flags
            want.add(fid, 40 + payload, counted)
        convs.append(frames)
    # Interleave conversations, keeping each one's order.
    cursors = [0] * len(convs)
    order: list[bytes] = []
    live = list(range(len(convs)))
    while live:
        c = rng.choice(live)
        order.append(convs[c][cursors[c]])
        cursors[c] += 1
        if cursors[c] == len(convs[c]):
            live.remove(c)
    driver.send(order)
    driver.receiver.flush()
    _assert_exact(driver, want)
    rows = driver.consumer.records()
    replies = rows[rows["is_reply"] == 1]
    assert (replies["src_port"] == 443).all() and len(replies) > 0
    assert driver.receiver.kernel_stats()["flow_cache_hits"] > 0


def test_report_interval_passes_while_cached(make_driver: Any) -> None:
    """A steady flow in the cache still gets a row every report interval, and loses nothing."""
    driver = make_driver(report_interval=0.2)
    frame, ip_len = _udp_frame("198.18.3.1", "198.18.3.2", 4000, 4001, 30)
    want = Expected()
    wall_before = time.time_ns()
    started = time.monotonic()
    while time.monotonic() - started < 1.3:
        driver.send([frame] * 20, spread=False)
        for _ in range(20):
            want.add(("198.18.3.1", "198.18.3.2", 4000, 4001, 17), ip_len)
        time.sleep(0.02)
    wall_after = time.time_ns()
    driver.receiver.flush()
    _assert_exact(driver, want)
    rec = driver.consumer.records()
    # Row times come from the table's tick clock (jiffies in ns) translated to the wall clock: within a
    # few ticks of when the packets were really counted, and in order.
    tick = 10_000_000
    assert (rec["time_start_ns"] >= wall_before - tick).all() and (rec["time_end_ns"] <= wall_after + tick).all()
    assert (rec["time_start_ns"] <= rec["time_end_ns"]).all()
    rows = driver.totals()["rows"][("198.18.3.1", "198.18.3.2", 4000, 4001, 17)]
    assert rows >= 5, rows  # first packet + one per 0.2 s interval (+ the reader's sweeps)
    assert driver.receiver.kernel_stats()["flow_cache_hits"] > 0.8 * sum(want.packets.values())
