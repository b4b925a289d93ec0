"""From DNS packets to counters, matched latencies and flow rows: the user-space half of the receiver.

No sockets here, so tests and benchmarks feed it packets directly. One call per DNS packet (the socket
filter passes nothing else); rows are kept as tuples and turned into one :class:`FlowBatch` per
interval.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retina_otel.dnsnames import rcode_name, type_name
from retina_otel.flows import Direction, Event, FlowBatch, ObservationPoint, Verdict
from retina_otel.receivers.dns.parser import DnsMessage, DnsParseError, parse_message, parse_tcp_payload

__all__ = ["DnsTracker", "TrackerOutput"]

_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")

_ROW_DTYPE = np.dtype(
    [
        ("ts", "<u8"),
        ("src", "S16"),
        ("dst", "S16"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("proto", "u1"),
        ("ipv", "u1"),
        ("ifindex", "<u4"),
        ("id", "<u2"),
        ("qtype", "<u2"),
        ("rcode", "u1"),
        ("resp", "u1"),
        ("ancount", "<u2"),
        ("latency_us", "<u4"),
    ]
)

PendingKey = tuple[int, bytes, int, bytes, int, int]  # (id, client ip, client port, server ip, port, proto)


@dataclass
class TrackerOutput:
    """What one interval produced."""

    requests: int = 0
    responses: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    lost: Counter[str] = field(default_factory=Counter)
    batch: FlowBatch | None = None


class DnsTracker:
    """Counts, matches and records DNS messages. Not thread-safe: the receiver serialises calls."""

    def __init__(
        self, *, query_timeout: float, max_pending: int, max_records: int, receiver: str = "dns"
    ) -> None:
        self.query_timeout_ns = int(query_timeout * 1e9)
        self.max_pending = max_pending
        self.max_records = max_records
        self.receiver = receiver
        self._pending: dict[PendingKey, int] = {}  # insertion order = arrival order
        self._out = TrackerOutput()
        self._rows: list[tuple[Any, ...]] = []
        self._extras: list[Mapping[str, Any]] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- per packet ---------------------------------------------------------------------------------
    def packet(self, data: bytes, ts_ns: int, ifindex: int = 0) -> None:
        """One network-layer packet (IPv4 or IPv6 header first) that the socket filter passed."""
        try:
            self._packet(data, ts_ns, ifindex)
        except (DnsParseError, IndexError, struct.error):
            self._out.lost["parse_error"] += 1

    def _packet(self, data: bytes, ts_ns: int, ifindex: int) -> None:
        version = data[0] >> 4
        if version == 4:
            l4 = (data[0] & 0x0F) * 4
            end = min(_U16.unpack_from(data, 2)[0], len(data))
            proto = data[9]
            src, dst = _V4_PREFIX + data[12:16], _V4_PREFIX + data[16:20]
        elif version == 6:
            l4 = 40
            end = min(40 + _U16.unpack_from(data, 4)[0], len(data))
            proto = data[6]
            src, dst = bytes(data[8:24]), bytes(data[24:40])
        else:
            raise DnsParseError("not IP")
        sport, dport = _PORTS.unpack_from(data, l4)
        if proto == 17:
            messages = [parse_message(bytes(data[l4 + 8 : end]))]
        elif proto == 6:
            offset = l4 + (data[l4 + 12] >> 4) * 4
            messages, rest = parse_tcp_payload(bytes(data[offset:end]))
            if rest:
                # A message split over segments: no reassembly (DNS over TCP is rare, answers small).
                self._out.lost["tcp_message_split"] += 1
        else:
            raise DnsParseError("not UDP or TCP")
        for msg in messages:
            self._message(msg, ts_ns, version, proto, src, dst, sport, dport, ifindex)

    def _message(
        self,
        msg: DnsMessage,
        ts: int,
        version: int,
        proto: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        ifindex: int,
    ) -> None:
        out = self._out
        latency_us = 0
        if msg.is_response:
            out.responses += 1
            started = self._pending.pop((msg.id, dst, dport, src, sport, proto), None)
            if started is not None:
                latency_us = max(1, (ts - started) // 1000)
                out.latencies_ms.append(latency_us / 1000.0)
        else:
            out.requests += 1
            key = (msg.id, src, sport, dst, dport, proto)
            if key not in self._pending:  # a retried query keeps the first one's time
                if len(self._pending) >= self.max_pending:
                    del self._pending[next(iter(self._pending))]
                    out.lost["pending_table_full"] += 1
                self._pending[key] = ts
        if len(self._rows) >= self.max_records:
            out.lost["record_buffer_full"] += 1
            return
        self._rows.append(
            (
                ts, src, dst, sport, dport, proto, version, ifindex, msg.id, msg.qtype, msg.rcode,
                msg.is_response, msg.answer_count, latency_us,
            )
        )  # fmt: skip
        self._extras.append(
            {
                "query": msg.query,
                "answers": list(msg.answers),
                "query_type": type_name(msg.qtype) if msg.query else "",
                "return_code": rcode_name(msg.rcode) if msg.is_response else "",
            }
        )

    # -- per interval ---------------------------------------------------------------------------------
    def expire(self, now_ns: int) -> None:
        """Forget queries older than the timeout (counted as unanswered)."""
        cutoff = now_ns - self.query_timeout_ns
        pending = self._pending
        expired = 0
        while pending:
            key = next(iter(pending))
            if pending[key] > cutoff:
                break
            del pending[key]
            expired += 1
        if expired:
            self._out.lost["unanswered_query"] += expired

    def take(self, now_ns: int) -> TrackerOutput:
        """This interval's counts, latencies, losses and flow rows; starts the next interval."""
        self.expire(now_ns)
        out, rows, extras = self._out, self._rows, self._extras
        self._out, self._rows, self._extras = TrackerOutput(), [], []
        if rows:
            out.batch = _to_batch(rows, extras, self.receiver)
        return out


def _to_batch(rows: list[tuple[Any, ...]], extras: list[Mapping[str, Any]], receiver: str) -> FlowBatch:
    a = np.array(rows, dtype=_ROW_DTYPE)
    batch = FlowBatch.empty(len(a), receiver=receiver)
    r = batch.records
    r["time_start_ns"] = a["ts"]
    r["time_end_ns"] = a["ts"]
    r["src_ip"] = a["src"].view("V16")
    r["dst_ip"] = a["dst"].view("V16")
    r["src_port"] = a["sport"]
    r["dst_port"] = a["dport"]
    r["proto"] = a["proto"]
    r["ip_version"] = a["ipv"]
    r["ifindex"] = a["ifindex"]
    resp = a["resp"]
    # Seen from the client (whose DNS it is): its queries leave it, responses come back to it.
    r["direction"] = np.where(resp == 1, Direction.INGRESS, Direction.EGRESS)
    r["is_reply"] = resp
    r["observation_point"] = ObservationPoint.UNKNOWN
    r["verdict"] = Verdict.FORWARDED
    r["event"] = Event.DNS
    r["packets"] = 1
    r["dns_id"] = a["id"]
    r["dns_qtype"] = a["qtype"]
    r["dns_rcode"] = a["rcode"]
    r["dns_is_response"] = resp
    r["dns_answer_count"] = a["ancount"]
    r["dns_latency_us"] = a["latency_us"]
    batch.dns = list(extras)
    return batch
