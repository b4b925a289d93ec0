"""From flow records to spans: one span per connection per observing side, DNS queries as short spans.

``add(batch)`` folds a :class:`~retina_otel.flows.FlowBatch` into the connection table (vectorised:
rows are grouped by key hash with one sort, totals added with ``reduceat``); ``take()`` returns the
spans that are finished:

* TCP: FIN both ways or a reset closes the connection; its span waits ``close_delay`` for late drop
  and retransmission events (other receivers report on their own interval), then goes out. Later
  reports of that row (packetparser flushes the last ACK up to its report interval afterwards) are
  absorbed by a tombstone instead of opening a new span; a new SYN on the same 5-tuple starts one.
* Every connection without a close (UDP, ICMP, TCP without FIN): after ``idle_timeout`` without a
  packet; the span ends at its last packet.
* DNS responses with a latency (``includeLayer7Data``): a span from query to response, at once.

The initiator is packetparser's (``is_reply``: who sent the connection's first packet). The side
observing is the pod (or node interface) the report was taken at: FROM_ENDPOINT/TO_NETWORK reports
observe their source, TO_ENDPOINT/FROM_NETWORK their destination. The initiator's side gives a CLIENT
span, the responder's a SERVER span (both when both pods are on this node).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.flows import Direction, EndpointTable, Event, FlowBatch, ObservationPoint, TcpFlag, Verdict, copy_rows
from retina_otel.traces.events import BUFFER_DTYPE, EventBuffer
from retina_otel.traces.ids import (
    ROLE_CLIENT,
    ROLE_DNS,
    TRACE_KEY_DTYPE,
    buckets,
    hash64,
    span_ids,
    trace_ids,
)
from retina_otel.traces.spans import SPAN_DTYPE, CloseReason, EventKind, SpanBatch, SpanKind, StatusCode
from retina_otel.traces.table import CLOSING, KEY_DTYPE, OPEN, ConnectionTable, Tombstones
from retina_otel.traces.targets import POINT_CLASS_OF_OBS, TraceTargets

__all__ = ["BuilderSettings", "SpanBuilder"]

_SEED_ROW = 0x524F575F4B455931  # "ROW_KEY1"
_SEED_SYM = 0x53594D5F4B455931  # "SYM_KEY1"
_ICMP = (1, 58)
_FIN, _SYN, _SYNACK, _RST = TcpFlag.FIN, TcpFlag.SYN, TcpFlag.SYNACK, TcpFlag.RST
_CONN_DTYPE = np.dtype([("a", "V16"), ("b", "V16"), ("pa", "<u2"), ("pb", "<u2"), ("proto", "<u4")])
_FLAG_BITS = (np.uint16(1) << np.arange(len(TcpFlag), dtype=np.uint16)).astype(np.uint16)


@dataclass(frozen=True, slots=True)
class BuilderSettings:
    max_connections: int = 65_536
    idle_timeout_tcp_ns: int = 360 * 10**9
    idle_timeout_other_ns: int = 60 * 10**9
    close_delay_ns: int = 12 * 10**9
    tombstone_ns: int = 60 * 10**9
    trace_id_window_ns: int = 10 * 10**9
    max_events_per_span: int = 128
    event_buffer: int = 65_536
    event_slack_ns: int = 10**9  # events this much outside a span's time range still join it


LostCounter = Callable[[str, int], None]


def _sym(a: Any, b: Any, pa: Any, pb: Any, proto: Any) -> npt.NDArray[np.uint64]:
    """The 5-tuple's hash, the same in both orientations (XOR of both orientations' hashes)."""
    n = len(a)
    fwd = np.empty(n, dtype=_CONN_DTYPE)
    rev = np.empty(n, dtype=_CONN_DTYPE)
    fwd["a"], fwd["b"], fwd["pa"], fwd["pb"], fwd["proto"] = a, b, pa, pb, proto
    rev["a"], rev["b"], rev["pa"], rev["pb"], rev["proto"] = b, a, pb, pa, proto
    return hash64(fwd.view("V40"), _SEED_SYM) ^ hash64(rev.view("V40"), _SEED_SYM)


def _object_column(entries: Any) -> npt.NDArray[np.object_]:
    """Endpoint entries as an object array with a trailing None, so index -1 gives None."""
    out = np.empty(len(entries) + 1, dtype=object)
    for i, entry in enumerate(entries):
        out[i] = entry
    return out


class SpanBuilder:
    """Not thread-safe by itself; the component serialises ``add`` and ``take``."""

    def __init__(
        self,
        settings: BuilderSettings,
        targets: TraceTargets,
        *,
        lost: LostCounter | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.targets = targets
        self.table = ConnectionTable(settings.max_connections)
        self.tombstones = Tombstones(settings.max_connections * 4)
        self.events = EventBuffer(settings.event_buffer)
        self._lost = lost or (lambda reason, n: None)
        self._clock = clock
        self._finished: list[SpanBatch] = []
        self.spans_out = 0

    # -- input ----------------------------------------------------------------------------------------
    def add(self, batch: FlowBatch) -> None:
        if not self.targets or not len(batch):
            return
        records = batch.records
        event = records["event"]
        obs_class = POINT_CLASS_OF_OBS[np.minimum(records["observation_point"], len(POINT_CLASS_OF_OBS) - 1)]
        flows = np.flatnonzero((event == Event.FLOW) & (obs_class != 255))
        if len(flows):
            self._add_flows(batch, flows)
        others = np.flatnonzero((event == Event.DROP) | (event == Event.RETRANSMIT))
        if len(others):
            self._add_events(records[others])
        if self.targets.any_l7:
            dns = np.flatnonzero(
                (event == Event.DNS) & (records["dns_is_response"] == 1) & (records["dns_latency_us"] > 0)
            )
            if len(dns):
                self._add_dns(batch, dns)

    def _add_flows(self, batch: FlowBatch, index: npt.NDArray[np.int64]) -> None:
        rows = batch.records[index]
        reply: npt.NDArray[np.bool_] = rows["is_reply"] != 0
        a = np.where(reply, rows["dst_ip"], rows["src_ip"])
        b = np.where(reply, rows["src_ip"], rows["dst_ip"])
        icmp = np.isin(rows["proto"], _ICMP)
        pa = np.where(icmp, 0, np.where(reply, rows["dst_port"], rows["src_port"])).astype(np.uint16)
        pb = np.where(icmp, 0, np.where(reply, rows["src_port"], rows["dst_port"])).astype(np.uint16)
        obs = rows["observation_point"]
        cls = POINT_CLASS_OF_OBS[obs]
        observes_src = (obs == ObservationPoint.FROM_ENDPOINT) | (obs == ObservationPoint.TO_NETWORK)
        client = observes_src != reply
        match = self.targets.match(a, b, pb, rows["proto"], cls)
        keep = np.flatnonzero(match.traced)
        if not len(keep):
            return
        rows, reply, a, b, pa, pb = rows[keep], reply[keep], a[keep], b[keep], pa[keep], pb[keep]
        cls, client = cls[keep], client[keep]
        all_packets = match.all_packets[keep]
        keys = np.zeros(len(rows), dtype=KEY_DTYPE)
        keys["a"], keys["b"], keys["pa"], keys["pb"] = a, b, pa, pb
        keys["proto"], keys["side"], keys["cls"], keys["ipver"] = rows["proto"], ~client, cls, rows["ip_version"]
        h = hash64(keys, _SEED_ROW)

        # Group rows by key: one sort, group boundaries, per-group sums.
        order = np.argsort(h, kind="stable")
        hs = h[order]
        starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])
        group_of_sorted = np.cumsum(np.r_[True, hs[1:] != hs[:-1]]) - 1
        group = np.empty(len(h), dtype=np.int64)
        group[order] = group_of_sorted
        g_h = hs[starts]
        g_key = keys[order][starts]
        first_row = order[starts]
        sr = rows[order]
        fwd: npt.NDArray[np.bool_] = np.logical_not(reply[order])
        flags = sr["tcp_flags"]

        def total(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return np.add.reduceat(values, starts, axis=0)

        def any_of(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
            return np.logical_or.reduceat(mask, starts)

        g_pk_f = total(np.where(fwd, sr["packets"], 0))
        g_by_f = total(np.where(fwd, sr["bytes"], 0))
        g_pk_r = total(np.where(fwd, 0, sr["packets"]))
        g_by_r = total(np.where(fwd, 0, sr["bytes"]))
        g_flags = total(flags.astype(np.uint32))
        g_first = np.minimum.reduceat(sr["time_start_ns"], starts)
        g_last = np.maximum.reduceat(sr["time_end_ns"], starts)
        g_syn_init = any_of(fwd & (flags[:, _SYN] > 0))
        g_fin = (any_of(fwd & (flags[:, _FIN] > 0)).astype(np.uint8)) | (
            any_of(~fwd & (flags[:, _FIN] > 0)).astype(np.uint8) << 1
        )
        g_rst_init = any_of(fwd & (flags[:, _RST] > 0))
        g_rst_resp = any_of(~fwd & (flags[:, _RST] > 0))
        g_srtt = np.maximum.reduceat(sr["srtt_us"], starts)
        g_handshake = np.maximum.reduceat(sr["handshake_us"], starts)
        g_all = np.logical_or.reduceat(all_packets[order], starts)
        ep_src, ep_dst = sr["src_endpoint"], sr["dst_endpoint"]
        g_ep_a = np.maximum.reduceat(np.where(fwd, ep_src, ep_dst), starts)
        g_ep_b = np.maximum.reduceat(np.where(fwd, ep_dst, ep_src), starts)

        slots = self.table.find(g_h)
        found = slots >= 0
        if found.any():
            clash = np.zeros(len(slots), dtype=bool)
            clash[found] = self.table.rows["key"][slots[found]] != g_key[found]
            if clash.any():
                self._lost("hash_collision", int(clash.sum()))
                slots[clash] = -2  # neither found nor new
        now = self._clock()
        # A SYN from the initiator on a row that is closing starts a new connection: finish the old one.
        restart = (slots >= 0) & g_syn_init & (self.table.rows["state"][np.maximum(slots, 0)] == CLOSING)
        if restart.any():
            old = slots[restart]
            self._finish(old, None, now)
            self.table.release(old)
            slots[restart] = -1
        new = slots == -1
        tomb = np.zeros(len(slots), dtype=bool)
        tomb[new] = self.tombstones.contains(g_h[new])
        if tomb.any():
            # Late reports of a finished row are absorbed; a SYN starts a new connection.
            self.tombstones.remove(g_h[tomb & g_syn_init])
            new &= ~tomb | g_syn_init
        new_groups = np.flatnonzero(new)
        if len(new_groups):
            got = self.table.allocate(len(new_groups))
            if len(got) < len(new_groups):
                self._lost("connection_table_full", len(new_groups) - len(got))
                new_groups = new_groups[: len(got)]
            slots[new] = -2
            slots[new_groups] = got
            t = self.table.rows
            t["key"][got] = g_key[new_groups]
            t["h"][got] = g_h[new_groups]
            k = g_key[new_groups]
            t["sym"][got] = _sym(k["a"], k["b"], k["pa"], k["pb"], k["proto"])
            t["start_ns"][got] = g_first[new_groups]
            t["obs"][got] = rows["observation_point"][first_row[new_groups]]
            t["ifindex"][got] = rows["ifindex"][first_row[new_groups]]
        live = np.flatnonzero(slots >= 0)
        if not len(live):
            return
        s = slots[live]
        t = self.table.rows
        t["start_ns"][s] = np.minimum(t["start_ns"][s], g_first[live])
        t["last_ns"][s] = np.maximum(t["last_ns"][s], g_last[live])
        t["packets"][s] += g_pk_f[live]
        t["bytes"][s] += g_by_f[live]
        t["reply_packets"][s] += g_pk_r[live]
        t["reply_bytes"][s] += g_by_r[live]
        t["tcp_flags"][s] += g_flags[live]
        t["fin"][s] |= g_fin[live]
        rst_by = np.where(g_rst_resp[live], 2, np.where(g_rst_init[live], 1, 0)).astype(np.uint8)
        t["rst_by"][s] = np.where(t["rst_by"][s] == 0, rst_by, t["rst_by"][s])
        srtt = g_srtt[live]
        t["srtt_us"][s] = np.where(srtt > 0, srtt, t["srtt_us"][s])
        t["handshake_us"][s] = np.maximum(t["handshake_us"][s], g_handshake[live])
        t["all_packets"][s] |= g_all[live]
        entries = _object_column(batch.endpoints.entries)
        ep_a, ep_b = g_ep_a[live], g_ep_b[live]
        has_a, has_b = ep_a >= 0, ep_b >= 0
        self.table.ep_a[s[has_a]] = entries[ep_a[has_a]]
        self.table.ep_b[s[has_b]] = entries[ep_b[has_b]]
        closing = (t["state"][s] == OPEN) & (t["key"]["proto"][s] == 6) & ((t["rst_by"][s] != 0) | (t["fin"][s] == 3))
        t["state"][s[closing]] = CLOSING
        t["close_at_ns"][s[closing]] = now
        if t["all_packets"][s].any():
            self._add_reports(rows, group, slots, now)

    def _add_reports(
        self, rows: npt.NDArray[np.void], group: npt.NDArray[np.int64], slots: npt.NDArray[np.int64], now: int
    ) -> None:
        row_slot = slots[group]
        t = self.table.rows
        use = np.flatnonzero(row_slot >= 0)
        use = use[t["all_packets"][row_slot[use]] != 0]
        if not len(use):
            return
        slot = row_slot[use]
        # Rank of each report within its row (rows arrive in batch order), against the per-span limit.
        order = np.argsort(slot, kind="stable")
        sorted_slot = slot[order]
        first = np.r_[True, sorted_slot[1:] != sorted_slot[:-1]]
        run_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - run_start
        allowed = t["reports"][slot].astype(np.int64) + rank < self.settings.max_events_per_span
        np.add.at(t["dropped_reports"], slot[~allowed], 1)
        np.add.at(t["reports"], slot[allowed], 1)
        chosen, slot = use[allowed], slot[allowed]
        r = rows[chosen]
        out = np.zeros(len(chosen), dtype=BUFFER_DTYPE)
        ev = out["event"]
        ev["time_ns"] = r["time_end_ns"]
        ev["packets"] = r["packets"]
        ev["bytes"] = r["bytes"]
        ev["kind"] = EventKind.REPORT
        ev["is_reply"] = r["is_reply"]
        ev["tcp_flags"] = ((r["tcp_flags"] > 0).astype(np.uint16) * _FLAG_BITS).sum(axis=1).astype(np.uint16)
        out["start_ns"] = r["time_start_ns"]
        out["sym"] = t["sym"][slot]
        out["key"] = t["h"][slot]
        out["added_ns"] = now
        lost = self.events.add(out)
        if lost:
            self._lost("event_buffer_full", lost)

    def _add_events(self, rows: npt.NDArray[np.void]) -> None:
        icmp = np.isin(rows["proto"], _ICMP)
        sport = np.where(icmp, 0, rows["src_port"])
        dport = np.where(icmp, 0, rows["dst_port"])
        out = np.zeros(len(rows), dtype=BUFFER_DTYPE)
        ev = out["event"]
        drop = rows["event"] == Event.DROP
        ev["time_ns"] = rows["time_end_ns"]
        ev["packets"] = np.where(drop, rows["packets"], rows["retransmits"])
        ev["bytes"] = rows["bytes"]
        ev["kind"] = np.where(drop, EventKind.DROP, EventKind.RETRANSMIT)
        ev["reason"] = rows["drop_reason"]
        out["start_ns"] = rows["time_start_ns"]
        out["sym"] = _sym(rows["src_ip"], rows["dst_ip"], sport, dport, rows["proto"])
        out["added_ns"] = self._clock()
        lost = self.events.add(out)
        if lost:
            self._lost("event_buffer_full", lost)

    def _add_dns(self, batch: FlowBatch, index: npt.NDArray[np.int64]) -> None:
        """A span per DNS response with a latency: initiator = the querier (the response's destination)."""
        rows = batch.records[index]
        match = self.targets.match(rows["dst_ip"], rows["src_ip"], rows["src_port"], rows["proto"], None)
        keep = np.flatnonzero(match.l7)
        if not len(keep):
            return
        rows, index = rows[keep], index[keep]
        n = len(rows)
        spans = SpanBatch.empty(n)
        r = spans.records
        f = r["flow"]
        for column in ("ip_version", "proto", "dns_id", "dns_qtype", "dns_rcode", "dns_answer_count", "dns_latency_us"):
            f[column] = rows[column]
        f["src_ip"], f["dst_ip"] = rows["dst_ip"], rows["src_ip"]
        f["src_port"], f["dst_port"] = rows["dst_port"], rows["src_port"]
        f["src_endpoint"], f["dst_endpoint"] = rows["dst_endpoint"], rows["src_endpoint"]
        f["time_end_ns"] = rows["time_end_ns"]
        f["time_start_ns"] = rows["time_end_ns"] - rows["dns_latency_us"].astype(np.uint64) * np.uint64(1000)
        f["event"] = Event.DNS
        f["verdict"] = Verdict.FORWARDED
        f["direction"] = Direction.EGRESS
        f["dns_is_response"] = 1
        f["packets"], f["reply_packets"] = 1, 1
        keys = self._trace_keys(f["src_ip"], f["dst_ip"], f["src_port"], f["dst_port"], f["proto"], f["time_start_ns"])
        r["trace_id"] = trace_ids(keys)
        r["span_id"] = span_ids(keys, ROLE_DNS + f["dns_id"].astype(np.int64))
        r["parent_span_id"] = span_ids(keys, ROLE_CLIENT)
        r["kind"] = SpanKind.CLIENT
        r["status"] = np.where(f["dns_rcode"] != 0, StatusCode.ERROR, StatusCode.UNSET)
        r["close_reason"] = CloseReason.DNS
        _, unique = np.unique(r["span_id"], return_index=True)  # one span when several points saw it
        unique.sort()
        spans.records = r[unique]
        spans.endpoints = batch.endpoints
        if batch.dns is not None:
            spans.dns = [batch.dns[int(i)] for i in index[unique]]
        self._finished.append(spans)

    # -- output ---------------------------------------------------------------------------------------
    def take(self, *, everything: bool = False) -> SpanBatch | None:
        """The spans finished by now (``everything``: also every open connection, as at shutdown)."""
        now = self._clock()
        t = self.table.rows
        occupied = self.table.occupied()
        state = t["state"][occupied]
        if everything:
            due = occupied
        else:
            idle_limit = np.where(
                t["key"]["proto"][occupied] == 6, self.settings.idle_timeout_tcp_ns, self.settings.idle_timeout_other_ns
            ).astype(np.uint64)
            idle = (state == OPEN) & (t["last_ns"][occupied] + idle_limit <= np.uint64(now))
            closed = (state == CLOSING) & (t["close_at_ns"][occupied] + np.uint64(self.settings.close_delay_ns) <= now)
            due = occupied[idle | closed]
        if len(due):
            reason = np.where(t["state"][due] == OPEN, CloseReason.SHUTDOWN if everything else CloseReason.IDLE, 0)
            self._finish(due, reason.astype(np.uint8), now)
            closed_rows = due[t["state"][due] == CLOSING]
            self.tombstones.add(t["h"][closed_rows], now + self.settings.tombstone_ns)
            self.table.release(due)
        self.tombstones.expire(now)
        live = self.table.occupied()
        self.events.sweep(t["sym"][live], t["h"][live], now - self.settings.close_delay_ns)
        if not self._finished:
            return None
        finished, self._finished = self._finished, []
        out = finished[0] if len(finished) == 1 else _concat(finished)
        self.spans_out += len(out)
        return out

    def _finish(self, slots: npt.NDArray[np.int64], reasons: npt.NDArray[np.uint8] | None, now: int) -> None:
        """Turn table rows into spans (kept until ``take``)."""
        del now
        t = self.table.rows[slots]
        n = len(slots)
        spans = SpanBatch.empty(n)
        r = spans.records
        f = r["flow"]
        key = t["key"]
        f["src_ip"], f["dst_ip"], f["src_port"], f["dst_port"] = key["a"], key["b"], key["pa"], key["pb"]
        f["proto"], f["ip_version"] = key["proto"], key["ipver"]
        f["time_start_ns"], f["time_end_ns"] = t["start_ns"], t["last_ns"]
        f["observation_point"] = t["obs"]
        f["direction"] = np.where(key["side"] == 0, Direction.EGRESS, Direction.INGRESS)
        f["event"] = Event.FLOW
        f["ifindex"] = t["ifindex"]
        for column in ("packets", "bytes", "reply_packets", "reply_bytes", "tcp_flags", "srtt_us", "handshake_us"):
            f[column] = t[column]
        joined = self.events.join(t["sym"], t["h"], t["start_ns"], t["last_ns"], self.settings.event_slack_ns)
        drops = joined.per_span(EventKind.DROP)
        retrans = joined.per_span(EventKind.RETRANSMIT)
        r["drops"] = np.minimum(drops, 2**32 - 1)
        f["retransmits"] = np.minimum(retrans, 2**32 - 1)
        f["drop_reason"] = joined.first_reason()
        f["verdict"] = np.where(drops > 0, Verdict.DROPPED, Verdict.FORWARDED)
        # Events: at most max_events_per_span per span, the rest counted as dropped.
        counts = np.bincount(joined.span, minlength=n)
        first = np.cumsum(counts) - counts
        rank = np.arange(len(joined.span)) - first[joined.span]
        keep = rank < self.settings.max_events_per_span
        spans.events = joined.events[keep]
        kept = np.bincount(joined.span[keep], minlength=n)
        r["event_count"] = kept
        r["event_start"] = np.cumsum(kept) - kept
        r["dropped_events"] = (counts - kept) + t["dropped_reports"]
        # Ids, kind, status.
        keys = self._trace_keys(key["a"], key["b"], key["pa"], key["pb"], key["proto"], t["start_ns"])
        role = 1 + key["side"].astype(np.int64) + 2 * key["cls"].astype(np.int64)
        r["trace_id"] = trace_ids(keys)
        r["span_id"] = span_ids(keys, role)
        root = role == ROLE_CLIENT
        r["parent_span_id"] = np.where(root, np.zeros(1, dtype="V8"), span_ids(keys, ROLE_CLIENT))
        r["kind"] = np.where(key["side"] == 0, SpanKind.CLIENT, SpanKind.SERVER)
        refused = (t["rst_by"] == 2) & (t["tcp_flags"][:, _SYNACK] == 0)
        close = np.where(refused, CloseReason.REFUSED, np.where(t["rst_by"] != 0, CloseReason.RST, CloseReason.FIN))
        if reasons is not None:
            close = np.where(reasons != 0, reasons, close)
        r["close_reason"] = close
        error = (t["rst_by"] != 0) | (drops > 0)
        r["status"] = np.where(error, StatusCode.ERROR, StatusCode.UNSET)
        spans.endpoints, f["src_endpoint"], f["dst_endpoint"] = _endpoints(
            self.table.ep_a[slots], self.table.ep_b[slots]
        )
        self.events.forget_keys(t["h"])
        self._finished.append(spans)

    def _trace_keys(self, a: Any, b: Any, pa: Any, pb: Any, proto: Any, first_ns: Any) -> npt.NDArray[np.void]:
        keys = np.zeros(len(a), dtype=TRACE_KEY_DTYPE)
        icmp = np.isin(proto, _ICMP)
        keys["a"], keys["b"] = a, b
        keys["pa"], keys["pb"] = np.where(icmp, 0, pa), np.where(icmp, 0, pb)
        keys["proto"] = proto
        keys["bucket"] = buckets(np.asarray(first_ns, dtype=np.uint64), self.settings.trace_id_window_ns)
        return keys

    @property
    def open_connections(self) -> int:
        return len(self.table)


def _endpoints(
    ep_a: npt.NDArray[np.object_], ep_b: npt.NDArray[np.object_]
) -> tuple[EndpointTable, npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """One endpoint table for a span batch from the rows' metadata references (shared dicts, deduplicated
    by identity)."""
    index: dict[int, int] = {}
    entries: list[Mapping[str, Any]] = []

    def position(entry: Any) -> int:
        if entry is None:
            return -1
        found = index.get(id(entry))
        if found is None:
            found = index[id(entry)] = len(entries)
            entries.append(entry)
        return found

    a = np.fromiter((position(e) for e in ep_a), dtype=np.int32, count=len(ep_a))
    b = np.fromiter((position(e) for e in ep_b), dtype=np.int32, count=len(ep_b))
    return EndpointTable(tuple(entries)), a, b


def _concat(batches: list[SpanBatch]) -> SpanBatch:
    """Several span batches as one: endpoint tables appended, indices and event offsets shifted."""
    entries: list[Mapping[str, Any]] = []
    records: list[npt.NDArray[np.void]] = []
    events: list[npt.NDArray[np.void]] = []
    dns: list[Mapping[str, Any] | None] = []
    any_dns = any(b.dns is not None for b in batches)
    n_events = 0
    for b in batches:
        r = copy_rows(b.records)
        shift = np.int32(len(entries))
        for side in ("src_endpoint", "dst_endpoint"):
            col = r["flow"][side]
            col[col >= 0] += shift
        r["event_start"] += np.uint32(n_events)
        n_events += len(b.events)
        entries.extend(b.endpoints.entries)
        records.append(r)
        events.append(b.events)
        if any_dns:
            dns.extend(b.dns if b.dns is not None else [None] * len(b))
    out = SpanBatch(
        records=np.concatenate(records) if records else np.zeros(0, dtype=SPAN_DTYPE),
        events=np.concatenate(events),
        endpoints=EndpointTable(tuple(entries)),
    )
    if any_dns:
        out.dns = dns
    return out
