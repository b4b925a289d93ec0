"""The DNS parser and tracker without a kernel: dnspython agreement, fuzzing, matching and bounds."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retina_otel.dnsnames import rcode_name, type_name
from retina_otel.flows import Direction, Event, bytes_to_ip
from retina_otel.receivers.dns.parser import DnsParseError, parse_message, parse_tcp_payload
from retina_otel.receivers.dns.tracker import DnsTracker


def _response(name: str, rdtype: str, *answers: str, rcode: int = 0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.Rcode(rcode))
    if answers:
        r.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, *answers))
    return r


def test_query_and_response_agree_with_dnspython() -> None:
    q = dns.message.make_query("www.example.test", "AAAA")
    m = parse_message(q.to_wire())
    assert (m.id, m.is_response, m.query, m.qtype, m.answers, m.answer_count) == (
        q.id, False, "www.example.test.", 28, (), 0,
    )  # fmt: skip
    r = _response("www.example.test.", "AAAA", "2001:db8::1", "2001:db8::2")
    r.answer.insert(0, dns.rrset.from_text("alias.example.test.", 60, "IN", "CNAME", "www.example.test."))
    m = parse_message(r.to_wire())  # dnspython compresses names: pointers are exercised
    assert m.is_response and m.rcode == 0 and m.answer_count == 3
    assert m.answers[0] == "www.example.test." and sorted(m.answers[1:]) == ["2001:db8::1", "2001:db8::2"]
    nx = parse_message(_response("nope.example.test.", "A", rcode=3).to_wire())
    assert nx.rcode == 3 and rcode_name(nx.rcode) == "NXDOMAIN" and nx.answers == ()
    assert type_name(1) == "A" and type_name(28) == "AAAA" and type_name(65) == "HTTPS"
    assert rcode_name(0) == "NOERROR" and rcode_name(5) == "REFUSED"
    assert type_name(65280) == "TYPE65280" and rcode_name(12) == "12"  # unassigned


def test_tcp_payload_messages_and_leftover() -> None:
    one = dns.message.make_query("a.test", "A").to_wire()
    two = _response("b.test.", "A", "198.18.0.9").to_wire()
    stream = struct.pack("!H", len(one)) + one + struct.pack("!H", len(two)) + two
    messages, rest = parse_tcp_payload(stream)
    assert [m.query for m in messages] == ["a.test.", "b.test."] and rest == 0
    messages, rest = parse_tcp_payload(stream[:-3])
    assert len(messages) == 1 and rest == len(two) - 1


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00" * 11,
        b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x3f" + b"a" * 10,  # label past the end
        b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x40\x00",  # extended label type
        b"\x00\x01\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x01\x00\x01",
    ],
)
def test_malformed_messages_raise_parse_error(wire: bytes) -> None:
    with pytest.raises(DnsParseError):
        parse_message(wire)


def test_long_name_is_rejected() -> None:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    with pytest.raises(DnsParseError):
        parse_message(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x01\x00\x01")


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_fuzz_any_bytes(data: bytes) -> None:
    with contextlib.suppress(DnsParseError):
        parse_message(data)
    with contextlib.suppress(DnsParseError):
        parse_tcp_payload(data)


_VALID = [
    _response("www.example.test.", "A", "198.18.0.1", "198.18.0.2").to_wire(),
    _response("x.example.test.", "AAAA", "2001:db8::5").to_wire(),
    dns.message.make_query("q.test", "MX").to_wire(),
]


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_fuzz_mutated_messages(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    wire = bytearray(base)
    for pos, value in flips:
        if pos < len(wire):
            wire[pos] = value
    data = bytes(wire[: len(wire) - cut] if cut < len(wire) else wire)
    try:
        m = parse_message(data)
    except DnsParseError:
        return
    assert 0 <= m.rcode <= 15 and len(m.answers) <= m.answer_count


@settings(max_examples=1500, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.booleans(), st.booleans())
def test_fuzz_tracker_packets(payload: bytes, v6: bool, tcp: bool) -> None:
    tracker = DnsTracker(query_timeout=5, max_pending=8, max_records=8)
    tracker.packet(payload, 1)  # raw garbage as a packet
    tracker.packet(_ip(v6, tcp, 5353, 53, payload), 1)
    out = tracker.take(10)
    assert out.requests + out.responses + sum(out.lost.values()) >= 1


# -- tracker --------------------------------------------------------------------------------------


def _ip(v6: bool, tcp: bool, sport: int, dport: int, payload: bytes, src: str = "", dst: str = "") -> bytes:
    if tcp:
        payload = struct.pack("!H", len(payload)) + payload
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 1000, 0, 0) + payload
        proto = 6
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        proto = 17
    if v6:
        s = ipaddress.IPv6Address(src or "2001:db8::1").packed
        d = ipaddress.IPv6Address(dst or "2001:db8::2").packed
        return struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + s + d + l4
    s = ipaddress.IPv4Address(src or "198.18.0.1").packed
    d = ipaddress.IPv4Address(dst or "198.18.0.2").packed
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0) + s + d + l4


@pytest.mark.parametrize(("v6", "tcp"), [(False, False), (True, False), (False, True), (True, True)])
def test_tracker_matches_query_and_response(v6: bool, tcp: bool) -> None:
    tracker = DnsTracker(query_timeout=5, max_pending=100, max_records=100)
    q = dns.message.make_query("www.example.test", "A")
    r = _response("www.example.test.", "A", "198.18.0.7")
    r.id = q.id
    tracker.packet(_ip(v6, tcp, 40000, 53, q.to_wire()), 1_000_000_000, ifindex=3)
    # A response with another id, and one to another port, do not match.
    tracker.packet(_ip(v6, tcp, 53, 40001, r.to_wire(), src="", dst=""), 1_001_000_000)
    other = dns.message.from_wire(r.to_wire())
    other.id = (q.id + 1) % 65536
    tracker.packet(_ip(v6, tcp, 53, 40000, other.to_wire()), 1_001_000_000)
    # The swap of src/dst: the real response comes from the server.
    srv, cli = ("2001:db8::2", "2001:db8::1") if v6 else ("198.18.0.2", "198.18.0.1")
    tracker.packet(_ip(v6, tcp, 53, 40000, r.to_wire(), src=srv, dst=cli), 1_003_500_000)
    assert tracker.pending == 0
    out = tracker.take(2_000_000_000)
    assert out.requests == 1 and out.responses == 3 and out.latencies_ms == [3.5]
    assert not out.lost
    batch = out.batch
    assert batch is not None and len(batch) == 4 and batch.dns is not None
    rows = batch.records
    assert list(rows["dns_is_response"]) == [0, 1, 1, 1]
    assert list(rows["dns_latency_us"]) == [0, 0, 0, 3500]
    assert list(rows["direction"]) == [Direction.EGRESS] + [Direction.INGRESS] * 3
    assert set(rows["event"].tolist()) == {int(Event.DNS)}
    assert set(rows["proto"].tolist()) == {6 if tcp else 17}
    assert set(rows["ip_version"].tolist()) == {6 if v6 else 4}
    assert str(bytes_to_ip(rows["src_ip"][0])) == cli and int(rows["dst_port"][0]) == 53
    assert int(rows["ifindex"][0]) == 3
    assert batch.dns[0] == {"query": "www.example.test.", "answers": [], "query_type": "A", "return_code": ""}
    assert batch.dns[3] == {
        "query": "www.example.test.",
        "answers": ["198.18.0.7"],
        "query_type": "A",
        "return_code": "NOERROR",
    }


def test_tracker_bounds_and_expiry() -> None:
    tracker = DnsTracker(query_timeout=1, max_pending=3, max_records=4)
    for i in range(5):
        q = dns.message.make_query(f"q{i}.test", "A")
        tracker.packet(_ip(False, False, 40000 + i, 53, q.to_wire()), 1_000_000_000 + i)
    assert tracker.pending == 3
    tracker.packet(b"\x45garbage", 5)
    out = tracker.take(1_500_000_000)
    assert out.requests == 5
    assert out.lost == {"pending_table_full": 2, "record_buffer_full": 1, "parse_error": 1}
    assert out.batch is not None and len(out.batch) == 4
    out = tracker.take(3_000_000_000)  # the other three were never answered
    assert out.lost == {"unanswered_query": 3} and tracker.pending == 0 and out.batch is None
