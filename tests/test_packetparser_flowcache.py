"""High aggregation's per-CPU flow cache, on crafted packets through BPF_PROG_TEST_RUN.

The receiver runs for real (its ring-buffer reader, cache sweep and flush), attached to no interface;
the packets go straight into the program it attaches at FROM_ENDPOINT (the fast path, which hands what
it does not count to ``pp_from_endpoint`` by tail call) from both CPUs. More flows than cache slots, TCP
flag sequences in both directions, sweeps in the middle of a stream and report intervals passing must
all leave every flow's totals exact; and the fast path must count exactly what the full program counts.
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
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether

from retina_otel.component import CreateSettings
from retina_otel.eventdemand import EventDemand
from retina_otel.flows import TcpFlag, bytes_to_ip
from retina_otel.receivers.packetparser import FACTORY, PacketParserConfig
from retina_otel.receivers.packetparser.kernel import prog_test_run
from retina_otel.receivers.packetparser.receiver import HOT_SLOTS, PacketParserReceiver
from retina_otel.testing import CollectingConsumer, TestHost, wait_for

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
    def __init__(self, receiver: PacketParserReceiver, consumer: CollectingConsumer, entry: bool = True) -> None:
        self.receiver = receiver
        self.consumer = consumer
        # entry: the program attached at FROM_ENDPOINT (the fast path); else the full program directly.
        self.fd = receiver.entry_program_fd("from_endpoint") if entry else receiver._fds["pp_from_endpoint"]
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

    def make(entry: bool = True, event_demand: EventDemand | None = None, **cfg: Any) -> Driver:
        consumer = CollectingConsumer()
        config = PacketParserConfig(
            interfaces=("retina-otel-none-*",), host_interface="none", aggregation="high", **cfg
        )
        # With a demand: the records reach only summing consumers and ones that read each while they hold it.
        settings = CreateSettings(
            "packetparser", "receiver", only_sums=event_demand is not None, event_demand=event_demand
        )
        r = FACTORY.create(settings, config, consumer)
        assert isinstance(r, PacketParserReceiver)
        r.start(TestHost())
        started.append(r)
        return Driver(r, consumer, entry)

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


@pytest.mark.parametrize(("report_interval", "report_rule"), [(30.0, "events"), (0.05, "events"), (0.05, "close")])
def test_many_udp_flows_on_both_cpus_exact(make_driver: Any, report_interval: float, report_rule: str) -> None:
    """3x more flows than cache slots (collisions, take-overs), IPv4 and IPv6, a sweep mid-stream; with a
    short report interval the reader thread also sweeps and flushes while packets are counted."""
    driver = make_driver(report_interval=report_interval, report_rule=report_rule)
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


@pytest.mark.parametrize("report_rule", ["events", "close"])
def test_tcp_conversations_flags_and_directions_exact(make_driver: Any, report_rule: str) -> None:
    """Interleaved connections: handshake, data and ACKs both ways, FINs; per-direction flag counts."""
    driver = make_driver(report_rule=report_rule)
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


@pytest.mark.parametrize("report_rule", ["events", "close"])
def test_report_interval_passes_while_cached(make_driver: Any, report_rule: str) -> None:
    """A steady flow in the cache still gets a row every report interval, and loses nothing."""
    driver = make_driver(report_interval=0.2, report_rule=report_rule)
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
    assert rows >= 5, rows  # (events: first packet +) one per 0.2 s interval (+ the reader's sweeps)
    assert driver.receiver.kernel_stats()["flow_cache_hits"] > 0.8 * sum(want.packets.values())


def test_close_rule_reports_a_short_connection_on_fin_and_the_rest_at_the_flush(make_driver: Any) -> None:
    """A short connection on one CPU: Retina's rule writes a row on SYN, SYN-ACK, the first ACK, the first
    PSH and each FIN; the close rule one per FIN, and the flush the trailing ACK. Same totals."""
    A, P, S, F = TcpFlag.ACK, TcpFlag.PSH, TcpFlag.SYN, TcpFlag.FIN
    cli, srv = "198.18.4.1", "198.18.4.2"
    fwd, rev = (cli, srv, 40000, 80, 6), (srv, cli, 80, 40000, 6)
    steps: list[tuple[FlowId, tuple[TcpFlag, ...], int]] = [
        (fwd, (S,), 0),
        (rev, (S, A), 0),
        (fwd, (A,), 0),
        (fwd, (P, A), 100),
        (rev, (A,), 0),
        (rev, (P, A), 300),
        (fwd, (A,), 0),
        (fwd, (F, A), 0),
        (rev, (F, A), 0),
        (fwd, (A,), 0),
    ]
    rows: dict[str, dict[FlowId, int]] = {}
    for rule in ("events", "close"):
        driver = make_driver(report_rule=rule, report_on_close="always")
        want = Expected()
        frames = []
        for fid, flags, payload in steps:
            frames.append(_tcp_frame(fid[0], fid[1], fid[2], fid[3], flags, payload))
            want.add(fid, 40 + payload, (TcpFlag.SYNACK, A) if flags == (S, A) else flags)
        driver.send(frames, spread=False)
        driver.receiver.flush()
        _assert_exact(driver, want)
        rows[rule] = driver.totals()["rows"]
    assert rows["events"] == {fwd: 5, rev: 3}  # SYN, ACK, PSH, FIN, flush | SYN-ACK, PSH, FIN
    assert rows["close"] == {fwd: 2, rev: 1}  # FIN, flush | FIN


def test_switched_rule_follows_the_event_demand_and_keeps_every_count(make_driver: Any) -> None:
    """report_rule auto with an event demand (the observer's): the close rule while nobody holds it,
    Retina's while a holder (a following client) does, and back; each switch sweeps the flow cache.
    Connections that live across the switches, on both CPUs, keep exact totals."""
    A, P, S, F = TcpFlag.ACK, TcpFlag.PSH, TcpFlag.SYN, TcpFlag.FIN
    demand = EventDemand()
    driver = make_driver(event_demand=demand, report_on_close="always")
    want = Expected()

    def short_connection(port: int) -> tuple[FlowId, FlowId]:
        cli, srv = "198.18.5.1", "198.18.5.2"
        fwd, rev = (cli, srv, port, 80, 6), (srv, cli, 80, port, 6)
        steps = [(fwd, (S,), 0), (rev, (S, A), 0), (fwd, (A,), 0), (fwd, (P, A), 100), (rev, (A,), 0)]
        steps += [(rev, (P, A), 300), (fwd, (A,), 0), (fwd, (F, A), 0), (rev, (F, A), 0), (fwd, (A,), 0)]
        frames = []
        for fid, flags, payload in steps:
            frames.append(_tcp_frame(fid[0], fid[1], fid[2], fid[3], flags, payload))
            want.add(fid, 40 + payload, (TcpFlag.SYNACK, A) if flags == (S, A) else flags)
        driver.send(frames, spread=False)
        return fwd, rev

    def rows_of(*fids: FlowId) -> list[int]:
        driver.receiver.flush()
        rows = driver.totals()["rows"]
        return [rows.get(f, 0) for f in fids]

    # A long-lived conversation across every switch, packets on both CPUs.
    lfwd, lrev = ("198.18.5.3", "198.18.5.4", 41000, 443, 6), ("198.18.5.4", "198.18.5.3", 443, 41000, 6)

    def long_conversation(n: int, first: bool = False) -> None:
        frames = []
        if first:
            frames.append(_tcp_frame(*lfwd[:4], (S,), 0))
            want.add(lfwd, 40, (S,))
        for i in range(n):
            fid = lfwd if i % 3 else lrev
            frames.append(_tcp_frame(*fid[:4], (P, A), 20))
            want.add(fid, 60, (P, A))
        driver.send(frames)

    assert driver.receiver.rule_switches == 0  # nobody held it at start: the close rule from the first packet
    long_conversation(200, first=True)
    close_rows = rows_of(*short_connection(42000))
    with demand.hold():
        long_conversation(200)
        events_rows = rows_of(*short_connection(42001))
    long_conversation(200)
    after_rows = rows_of(*short_connection(42002))
    assert (close_rows, events_rows, after_rows) == ([2, 1], [5, 3], [2, 1])  # as in the test above
    assert driver.receiver.rule_switches == 2
    _assert_exact(driver, want)


def _short_connection(port: int, want: Expected) -> tuple[list[bytes], FlowId, FlowId]:
    """A short TCP connection's frames (handshake, request, response, both FINs), added to ``want``."""
    A, P, S, F = TcpFlag.ACK, TcpFlag.PSH, TcpFlag.SYN, TcpFlag.FIN
    cli, srv = "198.18.6.1", "198.18.6.2"
    fwd, rev = (cli, srv, port, 80, 6), (srv, cli, 80, port, 6)
    steps = [(fwd, (S,), 0), (rev, (S, A), 0), (fwd, (A,), 0), (fwd, (P, A), 100), (rev, (P, A), 300)]
    steps += [(fwd, (F, A), 0), (rev, (F, A), 0), (fwd, (A,), 0)]
    frames = []
    for fid, flags, payload in steps:
        frames.append(_tcp_frame(fid[0], fid[1], fid[2], fid[3], flags, payload))
        want.add(fid, 40 + payload, (TcpFlag.SYNACK, A) if flags == (S, A) else flags)
    return frames, fwd, rev


def test_report_on_close_auto_writes_fin_records_only_while_the_table_could_fill(make_driver: Any) -> None:
    """``report_on_close: auto``: with the connection table nearly empty the close rule writes no record
    on FIN (the flush reports the finished connection, one row per direction); a burst that creates a
    CPU's budget of entries (a quarter of the table over the CPUs) turns the records on in the kernel at
    once, before user space looks again. Totals exact throughout."""
    driver = make_driver(report_rule="close", conntrack_max_entries=1024)
    receiver = driver.receiver
    want = Expected()
    assert receiver.reports_on_close  # on until the first judgement
    assert wait_for(lambda: not receiver.reports_on_close, timeout=5)  # the first tick: an empty table
    frames, fwd, rev = _short_connection(43000, want)
    reports = receiver.kernel_stats()["reports"]
    driver.send(frames, spread=False)
    assert receiver.kernel_stats()["reports"] == reports  # no record on either FIN
    receiver.flush()
    assert {f: driver.totals()["rows"][f] for f in (fwd, rev)} == {fwd: 1, rev: 1}
    _assert_exact(driver, want)

    budget = 1024 // (4 * len(os.sched_getaffinity(0)))
    burst = []
    for i in range(2 * budget + 10):  # more than two budgets: a tick refilling it meanwhile changes nothing
        frame, ip_len = _udp_frame("198.18.6.3", "198.18.6.4", 20000 + i, 53000, 10)
        burst.append(frame)
        want.add(("198.18.6.3", "198.18.6.4", 20000 + i, 53000, 17), ip_len)
    switches = receiver.close_report_switches
    driver.send(burst, spread=False)  # one CPU creates more entries than its budget
    assert receiver.reports_on_close
    frames, fwd, rev = _short_connection(43001, want)
    reports = receiver.kernel_stats()["reports"]
    driver.send(frames, spread=False)
    assert receiver.kernel_stats()["reports"] - reports >= 2  # a record on each FIN again
    receiver.flush()
    _assert_exact(driver, want)
    # User space then keeps them on: the table holds more than an eighth of its size (the way back off).
    time.sleep(1.5)
    assert receiver.reports_on_close
    assert receiver.close_report_switches == switches  # the kernel switched them on, not user space


def _fast_path_corpus() -> list[bytes]:
    """Frames the fast path takes, frames it must hand on, and broken variants of both."""
    v4 = {"src": "198.18.7.1", "dst": "198.18.7.2"}
    v6 = {"src": "2001:db8:7::1", "dst": "2001:db8:7::2"}
    base = [
        ETH / IP(**v4) / UDP(sport=21001, dport=53) / (b"q" * 18),
        ETH / IP(**v4) / UDP(sport=21002, dport=53),
        ETH / IP(**v4, options=[IPOption_RR(length=11)]) / UDP(sport=21003, dport=53) / b"opts",
        ETH / IP(**v4) / TCP(sport=21004, dport=80, flags="A"),
        ETH / IP(**v4) / TCP(sport=21005, dport=80, flags="PA") / (b"d" * 30),
        ETH / IP(**v4) / TCP(sport=21006, dport=80, flags="S"),
        ETH / IP(**v4) / TCP(sport=21007, dport=80, flags="FA"),
        ETH / IP(**v4) / TCP(sport=21008, dport=80, flags="AU"),
        ETH / IP(**v4, flags="MF") / UDP(sport=21009, dport=53) / (b"f" * 16),
        ETH / IP(**v4, frag=5) / (b"f" * 16),
        ETH / IP(**v4) / ICMP(type=8, id=77) / b"ping",
        ETH / Dot1Q(vlan=5) / IP(**v4) / UDP(sport=21010, dport=53) / b"vlan",
        ETH / IPv6(**v6) / UDP(sport=21011, dport=53) / (b"q" * 18),
        ETH / IPv6(**v6) / TCP(sport=21012, dport=443, flags="PA") / (b"d" * 10),
        ETH / IPv6(**v6) / IPv6ExtHdrHopByHop() / UDP(sport=21013, dport=53) / b"ext",
        ETH / IPv6(**v6) / ICMPv6EchoRequest(id=78),
    ]
    frames: list[bytes] = []
    for pkt in base:
        raw = bytes(pkt)
        frames.append(raw)
        l3 = 18 if raw[12:14] == b"\x81\x00" else 14
        # Every truncation BPF_PROG_TEST_RUN accepts: it refuses IP ethertypes shorter than their header.
        shortest = 15 if l3 == 18 else l3 + (20 if raw[l3] >> 4 == 4 else 40)
        frames.extend(raw[:n] for n in range(shortest, len(raw)))
        if raw[l3] >> 4 == 4:
            for tot in (0, 19, 27, 28, 39, len(raw) - l3 + 100):  # lying total lengths
                frames.append(raw[: l3 + 2] + tot.to_bytes(2, "big") + raw[l3 + 4 :])
            frames.append(raw[:l3] + bytes([0x44]) + raw[l3 + 1 :])  # IHL 4
            frames.append(raw[:l3] + bytes([0x65]) + raw[l3 + 1 :])  # version 6 under the IPv4 type
            ihl = (raw[l3] & 0x0F) * 4
            if raw[l3 + 9] == 6:
                doff = l3 + ihl + 12
                frames.append(raw[:doff] + bytes([0x40]) + raw[doff + 1 :])  # TCP data offset 4
        else:
            for plen in (0, 4, 7, 300):
                frames.append(raw[: l3 + 4] + plen.to_bytes(2, "big") + raw[l3 + 6 :])
    return frames


def _row_totals(driver: Driver) -> dict[tuple[Any, ...], tuple[int, ...]]:
    out: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0] + [0] * len(TcpFlag))
    for r in driver.consumer.records():
        key = (bytes(r["src_ip"]), bytes(r["dst_ip"]), int(r["src_port"]), int(r["dst_port"]), int(r["proto"]))
        t = out[key]
        t[0] += 1
        t[1] += int(r["packets"])
        t[2] += int(r["bytes"])
        t[3] += int(r["is_reply"])
        t[4] = int(r["ip_version"])
        for i, n in enumerate(r["tcp_flags"]):
            t[5 + i] += int(n)
    return {k: tuple(v) for k, v in out.items()}


def test_fast_path_counts_exactly_what_the_full_program_counts(make_driver: Any) -> None:
    """Every frame of the corpus, five times, through the fast path of one receiver and straight into the
    full program of another: the same rows, the same totals and the same statistics (rejections
    included); and the fast path did take the packets it is for."""
    frames = _fast_path_corpus()
    fast, full = make_driver(entry=True), make_driver(entry=False)
    assert fast.fd != full.fd
    for driver in (fast, full):
        for frame in frames:
            driver.send([frame] * 5, spread=False)
        driver.receiver.flush()
    got_fast, got_full = _row_totals(fast), _row_totals(full)
    assert got_fast == got_full
    assert sum(t[1] for t in got_full.values()) > 5 * 16  # the valid frames at least
    stats_fast, stats_full = fast.receiver.kernel_stats(), full.receiver.kernel_stats()
    assert stats_fast["tail_call_failed"] == 0
    assert stats_fast == stats_full
    assert stats_fast["flow_cache_hits"] >= 4 * 8  # repeats of the cacheable frames
    assert stats_fast["truncated_ip"] > 0 and stats_fast["truncated_l4"] > 0 and stats_fast["malformed_ip"] > 0


def test_flows_differing_in_one_address_byte_get_their_own_slots(make_driver: Any) -> None:
    """250 UDP flows that differ only in the last octet of the source address (same ports), three packets
    each, round robin: most must be counted in the cache, so the slot index depends on every address byte
    (a hash that ignored it would put them all in one slot, busy, and none would hit)."""
    driver = make_driver()
    want = Expected()
    frames: list[bytes] = []
    for host in range(1, 251):
        # not DNS ports: a DNS flow never takes a cache slot (its packets go on to the DNS chain)
        frame, ip_len = _udp_frame(f"198.18.11.{host}", "198.18.12.1", 5300, 5400, 10)
        frames.append(frame)
        for _ in range(3):
            want.add((f"198.18.11.{host}", "198.18.12.1", 5300, 5400, 17), ip_len)
    driver.send([f for _ in range(3) for f in frames], spread=False)
    driver.receiver.flush()
    _assert_exact(driver, want)
    assert driver.receiver.kernel_stats()["flow_cache_hits"] >= 0.7 * 500
