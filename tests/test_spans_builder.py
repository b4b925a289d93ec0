"""The span builder on constructed flow batches: grouping, sides, close rules, events, ids, bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_otel.crds.models import TraceConfiguration
from retina_otel.flows import STRINGS, Event, FlowBatch, ObservationPoint, TcpFlag, ip_to_bytes
from retina_otel.traces.builder import BuilderSettings, SpanBuilder
from retina_otel.traces.ids import TRACE_KEY_DTYPE, trace_ids
from retina_otel.traces.spans import CloseReason, EventKind, SpanKind, StatusCode
from retina_otel.traces.targets import compile_targets

C, S = "198.18.3.7", "198.18.3.9"
S_PORT = 8080
SEC = 10**9
T0 = 1_800_000_000 * SEC


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def targets(spec: list[dict[str, Any]] | None = None) -> Any:
    spec = spec if spec is not None else [{"captureLevel": "FirstPacket", "traceTargets": [{}]}]
    return compile_targets([TraceConfiguration.model_validate(s) for s in spec])


EVERYTHING = [
    {
        "captureLevel": "FirstPacket",
        "includeLayer7Data": True,
        "traceTargets": [{"to": {"ipBlock": {"cidr": "198.18.0.0/15"}}}],
    }
]


def row(
    batch: FlowBatch,
    i: int,
    *,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    obs: ObservationPoint,
    reply: bool,
    t: int,
    flags: tuple[TcpFlag, ...] = (),
    packets: int = 1,
    nbytes: int = 60,
    proto: int = 6,
    event: Event = Event.FLOW,
) -> None:
    r = batch.records
    r["src_ip"][i], r["dst_ip"][i] = ip_to_bytes(src), ip_to_bytes(dst)
    r["src_port"][i], r["dst_port"][i] = sport, dport
    r["proto"][i], r["ip_version"][i] = proto, 4
    r["observation_point"][i] = obs
    r["is_reply"][i] = reply
    r["time_start_ns"][i] = r["time_end_ns"][i] = t
    r["packets"][i], r["bytes"][i] = packets, nbytes
    r["event"][i] = event
    for flag in flags:
        r["tcp_flags"][i][flag] += 1


def drop_row(batch: FlowBatch, i: int, port: int, t: int, packets: int) -> None:
    """Row ``i``: dropreason's record of ``packets`` client -> server packets dropped by nftables."""
    row(
        batch,
        i,
        src=C,
        dst=S,
        sport=port,
        dport=S_PORT,
        obs=ObservationPoint.STACK,
        reply=False,
        t=t,
        packets=packets,
        event=Event.DROP,
    )
    batch.records["drop_reason"][i] = STRINGS.intern("NETFILTER_DROP")


def connection(port: int, t: int, *, refused: bool = False) -> FlowBatch:
    """A TCP connection C:port -> S:8080 as packetparser reports it on both pods' interfaces."""
    f = ObservationPoint.FROM_ENDPOINT
    to = ObservationPoint.TO_ENDPOINT
    if refused:
        plan = [(False, (TcpFlag.SYN,), 0), (True, (TcpFlag.RST, TcpFlag.ACK), 1)]
    else:
        plan = [
            (False, (TcpFlag.SYN,), 0),
            (True, (TcpFlag.SYNACK,), 1),
            (False, (TcpFlag.ACK, TcpFlag.PSH), 2),
            (False, (TcpFlag.FIN, TcpFlag.ACK), 3),
            (True, (TcpFlag.FIN, TcpFlag.ACK), 4),
        ]
    batch = FlowBatch.empty(len(plan) * 2)
    i = 0
    for reply, flags, dt in plan:
        src, dst, sport, dport = (S, C, S_PORT, port) if reply else (C, S, port, S_PORT)
        # client veth: client->server leaves the pod (FROM_ENDPOINT), replies enter it (TO_ENDPOINT)
        row(
            batch,
            i,
            src=src,
            dst=dst,
            sport=sport,
            dport=dport,
            obs=to if reply else f,
            reply=reply,
            t=t + dt * 1000,
            flags=flags,
        )
        # server veth: the opposite points
        row(
            batch,
            i + 1,
            src=src,
            dst=dst,
            sport=sport,
            dport=dport,
            obs=f if reply else to,
            reply=reply,
            t=t + dt * 1000 + 50,
            flags=flags,
        )
        i += 2
    return batch


def builder(spec: list[dict[str, Any]] | None = None, **settings: Any) -> tuple[SpanBuilder, Clock]:
    clock = Clock()
    lost: dict[str, int] = {}

    def count(reason: str, n: int) -> None:
        lost[reason] = lost.get(reason, 0) + n

    b = SpanBuilder(
        BuilderSettings(**{"close_delay_ns": 2 * SEC, **settings}),
        targets(spec if spec is not None else EVERYTHING),
        lost=count,
        clock=clock,
    )
    b.lost = lost  # type: ignore[attr-defined]
    return b, clock


def test_one_connection_gives_a_client_and_a_server_span_in_one_trace() -> None:
    b, clock = builder()
    b.add(connection(41234, T0))
    assert b.take() is None  # closing: waits close_delay for late events
    clock.now += 3 * SEC
    spans = b.take()
    assert spans is not None and len(spans) == 2
    r = spans.records
    kinds = sorted(int(k) for k in r["kind"])
    assert kinds == [SpanKind.SERVER, SpanKind.CLIENT]
    assert r["trace_id"][0] == r["trace_id"][1]
    client = r[r["kind"] == SpanKind.CLIENT][0]
    server = r[r["kind"] == SpanKind.SERVER][0]
    assert server["parent_span_id"] == client["span_id"]
    assert client["parent_span_id"] == np.zeros(1, dtype="V8")[0]
    assert client["flow"]["packets"] == 3 and client["flow"]["reply_packets"] == 2
    assert client["flow"]["time_start_ns"] == T0 and client["flow"]["time_end_ns"] == T0 + 4000
    assert server["flow"]["time_start_ns"] == T0 + 50
    assert client["close_reason"] == CloseReason.FIN and client["status"] == StatusCode.UNSET
    assert client["flow"]["src_port"] == 41234 and client["flow"]["dst_port"] == S_PORT
    assert b.open_connections == 0


def test_late_reports_of_a_closed_connection_open_no_span_and_a_new_syn_does() -> None:
    b, clock = builder()
    b.add(connection(41234, T0))
    clock.now += 3 * SEC
    assert b.take() is not None
    late = FlowBatch.empty(1)
    row(
        late,
        0,
        src=C,
        dst=S,
        sport=41234,
        dport=S_PORT,
        obs=ObservationPoint.FROM_ENDPOINT,
        reply=False,
        t=T0 + 5000,
        flags=(TcpFlag.ACK,),
    )
    b.add(late)
    assert b.open_connections == 0
    b.add(connection(41234, T0 + 4 * SEC))
    assert b.open_connections == 2


def test_refused_connection_is_an_error() -> None:
    b, clock = builder()
    b.add(connection(50000, T0, refused=True))
    clock.now += 3 * SEC
    spans = b.take()
    assert spans is not None and len(spans) == 2
    assert set(spans.records["status"].tolist()) == {StatusCode.ERROR}
    assert set(spans.records["close_reason"].tolist()) == {CloseReason.REFUSED}


def test_drops_and_retransmissions_become_events_of_the_matching_connection_only() -> None:
    b, clock = builder()
    b.add(connection(41234, T0))
    b.add(connection(41235, T0))
    events = FlowBatch.empty(2)
    drop_row(events, 0, 41234, T0 + 2500, 3)
    row(
        events,
        1,
        src=C,
        dst=S,
        sport=41234,
        dport=S_PORT,
        obs=ObservationPoint.STACK,
        reply=False,
        t=T0 + 2600,
        event=Event.RETRANSMIT,
    )
    events.records["retransmits"][1] = 2
    clock.now += SEC
    b.add(events)  # after the close, inside close_delay
    clock.now += 3 * SEC
    spans = b.take()
    assert spans is not None and len(spans) == 4
    r = spans.records
    hit = r["flow"]["src_port"] == 41234
    assert (r["drops"][hit] == 3).all() and (r["drops"][~hit] == 0).all()
    assert (r["status"][hit] == StatusCode.ERROR).all() and (r["status"][~hit] == StatusCode.UNSET).all()
    assert (r["flow"]["retransmits"][hit] == 2).all()
    for i in np.flatnonzero(hit):
        ev = spans.span_events(int(i))
        assert sorted(ev["kind"].tolist()) == [EventKind.DROP, EventKind.RETRANSMIT]
        assert STRINGS.name(int(ev[ev["kind"] == EventKind.DROP]["reason"][0])) == "NETFILTER_DROP"
    assert all(len(spans.span_events(int(i))) == 0 for i in np.flatnonzero(~hit))
    assert len(b.events) == 0


def test_udp_ends_after_idle_timeout_and_all_packets_adds_report_events() -> None:
    spec = [{"captureLevel": "AllPackets", "traceTargets": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}]
    b, clock = builder(spec, idle_timeout_other_ns=5 * SEC)
    batch = FlowBatch.empty(2)
    row(batch, 0, src=C, dst=S, sport=3333, dport=53, obs=ObservationPoint.FROM_ENDPOINT, reply=False, t=T0, proto=17)
    row(batch, 1, src=S, dst=C, sport=53, dport=3333, obs=ObservationPoint.TO_ENDPOINT, reply=True, t=T0 + 10, proto=17)
    b.add(batch)
    b.add(connection(41234, T0))  # TCP to 8080: not targeted
    assert b.open_connections == 1
    clock.now += 4 * SEC
    assert b.take() is None
    clock.now += 2 * SEC
    spans = b.take()
    assert spans is not None and len(spans) == 1
    assert spans.records["close_reason"][0] == CloseReason.IDLE
    assert spans.records["event_count"][0] == 2
    assert set(spans.events["kind"].tolist()) == {EventKind.REPORT}


def test_dns_response_becomes_a_span_with_its_latency_parented_to_the_query_connection() -> None:
    b, _ = builder()
    batch = FlowBatch.empty(1)
    row(
        batch,
        0,
        src=S,
        dst=C,
        sport=53,
        dport=3333,
        obs=ObservationPoint.UNKNOWN,
        reply=True,
        t=T0 + 1500_000,
        proto=17,
        event=Event.DNS,
    )
    r = batch.records
    r["dns_is_response"][0], r["dns_latency_us"][0], r["dns_id"][0] = 1, 1500, 77
    batch.dns = [{"query": "checkout.shop.svc.cluster.local.", "query_type": "A"}]
    b.add(batch)
    spans = b.take()
    assert spans is not None and len(spans) == 1
    f = spans.records["flow"][0]
    assert f["time_end_ns"] - f["time_start_ns"] == 1_500_000
    assert spans.dns is not None and spans.dns[0] is not None
    assert spans.dns[0]["query"].startswith("checkout")
    key = np.zeros(1, dtype=TRACE_KEY_DTYPE)
    key["a"], key["b"], key["pa"], key["pb"], key["proto"] = ip_to_bytes(C), ip_to_bytes(S), 3333, 53, 17
    key["bucket"] = T0 // (10 * SEC)
    assert spans.records["trace_id"][0] == trace_ids(key)[0]


def test_table_is_bounded_and_the_excess_counted() -> None:
    b, _ = builder(max_connections=4)
    for port in range(10):
        b.add(connection(40000 + port, T0))
    assert b.open_connections == 4
    assert b.lost == {"connection_table_full": 16}  # type: ignore[attr-defined]


def test_no_configuration_builds_nothing() -> None:
    b, _ = builder([])
    b.add(connection(41234, T0))
    assert b.open_connections == 0 and b.take(everything=True) is None


def test_target_by_initiator_address_and_responder_port() -> None:
    spec = [
        {
            "captureLevel": "FirstPacket",
            "traceTargets": [
                {"from": {"ipBlock": {"cidr": f"{C}/32"}}, "ports": [{"port": "8000", "endPort": "8100"}]}
            ],
        }
    ]
    b, _ = builder(spec)
    b.add(connection(41234, T0))
    assert b.open_connections == 2
    spec[0]["traceTargets"][0]["from"] = {"ipBlock": {"cidr": "198.18.0.0/15", "except": [f"{C}/32"]}}
    b2, _ = builder(spec)
    b2.add(connection(41234, T0))
    assert b2.open_connections == 0


def test_trace_id_is_the_same_for_both_nodes_clocks_within_the_bucket() -> None:
    key = np.zeros(2, dtype=TRACE_KEY_DTYPE)
    key["a"], key["b"], key["pa"], key["pb"], key["proto"] = ip_to_bytes(C), ip_to_bytes(S), 1, 2, 6
    key["bucket"] = [5, 5]
    ids = trace_ids(key)
    assert ids[0] == ids[1] and len(ids[0].tobytes()) == 16
    key["bucket"][1] = 6
    assert trace_ids(key)[1] != ids[0]


def test_node_interface_spans_when_trace_points_ask_for_them() -> None:
    """A connection to an address outside the node, seen on the node's interface (TO_NETWORK/FROM_NETWORK)
    and on the client pod's veth: with NodeToNetwork as well as PodToNode, a pod span and a node-interface
    span, both CLIENT, the node one a child of the pod one; with the default points, the pod span only."""
    points = ["PodToNode", "NodeToPod", "NodeToNetwork", "NetworkToNode"]
    spec = [{"captureLevel": "FirstPacket", "traceTargets": [{"tracePoints": points}]}]
    batch = FlowBatch.empty(4)
    for i, (obs, reply, flags) in enumerate(
        [
            (ObservationPoint.FROM_ENDPOINT, False, (TcpFlag.SYN,)),
            (ObservationPoint.TO_NETWORK, False, (TcpFlag.SYN,)),
            (ObservationPoint.FROM_NETWORK, True, (TcpFlag.RST,)),
            (ObservationPoint.TO_ENDPOINT, True, (TcpFlag.RST,)),
        ]
    ):
        src, dst, sport, dport = ("203.0.113.5", C, 443, 50000) if reply else (C, "203.0.113.5", 50000, 443)
        row(batch, i, src=src, dst=dst, sport=sport, dport=dport, obs=obs, reply=reply, t=T0 + i, flags=flags)
    b, clock = builder(spec)
    b.add(batch)
    clock.now += 3 * SEC
    spans = b.take()
    assert spans is not None and len(spans) == 2
    r = spans.records
    assert set(r["kind"].tolist()) == {SpanKind.CLIENT}
    pod = r[r["flow"]["observation_point"] == ObservationPoint.FROM_ENDPOINT][0]
    node = r[r["flow"]["observation_point"] == ObservationPoint.TO_NETWORK][0]
    assert node["parent_span_id"] == pod["span_id"] and pod["trace_id"] == node["trace_id"]
    assert (r["close_reason"] == CloseReason.REFUSED).all()
    default, clock = builder([{"captureLevel": "FirstPacket", "traceTargets": [{}]}])
    default.add(batch)
    assert default.open_connections == 1


def _concat_batches(batches: list[FlowBatch]) -> FlowBatch:
    return FlowBatch(records=np.concatenate([b.records for b in batches]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=59), min_size=0, max_size=8), st.randoms(use_true_random=False))
def test_spans_do_not_depend_on_how_reports_are_batched(cuts: list[int], rnd: Any) -> None:
    """The same reports of 6 connections, cut into batches anywhere (order kept within a connection,
    connections interleaved), give the same spans as one batch."""
    rows = _concat_batches([connection(41000 + i, T0 + i * 7) for i in range(6)]).records
    order = sorted(range(len(rows)), key=lambda i: (rows["time_start_ns"][i], rnd.random()))
    rows = rows[order]

    def spans_of(parts: list[np.ndarray]) -> np.ndarray:
        b, clock = builder()
        for part in parts:
            b.add(FlowBatch(records=part))
        clock.now += 3 * SEC
        out = b.take()
        assert out is not None
        return np.sort(out.records, order=["span_id"])

    whole = spans_of([rows])
    edges = sorted(set(cuts))
    parts = [p for p in np.split(rows, edges) if len(p)]
    assert len(whole) == 12
    assert (spans_of(parts) == whole).all()


def test_reset_after_the_handshake_is_an_error_named_reset() -> None:
    from retina_otel.traces.schema import span_views

    b, clock = builder()
    batch = connection(41234, T0)
    # the server resets instead of closing: its last report is RST,ACK, and the client's FIN never comes
    last = batch.select(slice(0, 8)).copy()
    last.records["tcp_flags"][6:8] = 0
    for i in (6, 7):
        last.records["tcp_flags"][i][TcpFlag.RST] = 1
        last.records["is_reply"][i] = True
        last.records["src_ip"][i], last.records["dst_ip"][i] = ip_to_bytes(S), ip_to_bytes(C)
        last.records["src_port"][i], last.records["dst_port"][i] = S_PORT, 41234
    b.add(last)
    clock.now += 3 * SEC
    spans = b.take()
    assert spans is not None and len(spans) == 2
    assert set(spans.records["close_reason"].tolist()) == {CloseReason.RST}
    assert set(spans.records["status"].tolist()) == {StatusCode.ERROR}
    assert {v.status_message for v in span_views(spans)} == {"connection reset"}


def test_icmp_echo_is_a_client_and_server_span_ended_by_the_idle_timeout() -> None:
    from retina_otel.traces.schema import span_views

    b, clock = builder(idle_timeout_other_ns=5 * SEC)
    batch = FlowBatch.empty(4)
    f, to = ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_ENDPOINT
    # echo request (type 8) and reply (type 0), each seen on the client's and the server's veth
    for i, (src, dst, icmp_type, reply, obs, t) in enumerate(
        [
            (C, S, 8, False, f, T0),
            (C, S, 8, False, to, T0 + 50),
            (S, C, 0, True, f, T0 + 100),
            (S, C, 0, True, to, T0 + 150),
        ]
    ):
        row(batch, i, src=src, dst=dst, sport=icmp_type, dport=0, obs=obs, reply=reply, t=t, proto=1)
    b.add(batch)
    assert b.open_connections == 2
    clock.now += 4 * SEC
    assert b.take() is None
    clock.now += 2 * SEC
    spans = b.take()
    assert spans is not None and len(spans) == 2
    r = spans.records
    assert sorted(int(k) for k in r["kind"]) == [SpanKind.SERVER, SpanKind.CLIENT]
    assert r["trace_id"][0] == r["trace_id"][1] and set(r["close_reason"].tolist()) == {CloseReason.IDLE}
    assert (r["flow"]["packets"] == 1).all() and (r["flow"]["reply_packets"] == 1).all()
    views = list(span_views(spans))
    assert {v.name for v in views} == {f"icmp {C} -> {S}"}
    assert all(v.attributes["source.address"] == C and v.status == StatusCode.UNSET for v in views)


def test_a_dns_error_response_is_an_error_span_naming_the_response_code() -> None:
    from retina_otel.traces.schema import span_views

    b, _ = builder()
    batch = FlowBatch.empty(2)
    for i, rcode in enumerate((3, 0)):
        row(batch, i, src=S, dst=C, sport=53, dport=3333 + i, obs=ObservationPoint.UNKNOWN, reply=True,
            t=T0 + 800_000, proto=17, event=Event.DNS)  # fmt: skip
        r = batch.records
        r["dns_is_response"][i], r["dns_latency_us"][i], r["dns_id"][i], r["dns_rcode"][i] = 1, 800, 90 + i, rcode
    batch.dns = [  # as the dns receiver's entries (return_code: the rcode's name)
        {"query": "missing.shop.test.", "query_type": "A", "return_code": "NXDOMAIN"},
        {"query": "ok.shop.test.", "query_type": "A", "return_code": "NOERROR"},
    ]
    b.add(batch)
    spans = b.take()
    assert spans is not None and len(spans) == 2
    views = {v.name: v for v in span_views(spans)}
    missing, ok = views["missing.shop.test."], views["ok.shop.test."]
    assert missing.status == StatusCode.ERROR and missing.attributes["dns.response_code"] == 3
    assert missing.status_message == "DNS response code NXDOMAIN"
    assert ok.status == StatusCode.UNSET and ok.attributes["dns.response_code"] == 0
    assert missing.end_ns - missing.start_ns == 800_000
