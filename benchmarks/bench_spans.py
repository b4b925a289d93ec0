"""spans connector: connections/min turned into spans on one core, and what the connection table holds.

Input as packetparser (high aggregation) hands it on when both ends are pods of this node: per short TCP
connection, SYN, SYN-ACK, a data report each way, FIN each way, each seen on the client's and on the
server's veth (12 rows, two spans: CLIENT and SERVER). Batches of 2,000 connections (24,000 rows, what
~1 s of 2,000 connections/s gives at packetparser's 0.5 s batch interval... rounded up), addresses of
1,000 pods, endpoint indices into a shared table. Each row is CPU time of the calling thread (numpy is
single-threaded here) for ``add`` of every batch plus ``take`` of the finished spans (close delay 0, so
every connection is finished and turned into spans, trace ids and all, in the run), then the same for
the export conversion (span views: names, attributes, events; what the OTLP and debug exporters do per
span). Baselines in the same run: the connector with no trace configuration (its zero-cost path) and a
per-row Python dict aggregation of the same rows (on a sample).

Memory: the table's arrays at ``max_connections`` (65,536) open connections, measured with tracemalloc
while filling it (numpy allocations are traced).
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np

from retina_otel.component import CreateSettings
from retina_otel.crds.models import TraceConfiguration
from retina_otel.flows import EndpointTable, FlowBatch, ObservationPoint, TcpFlag, ip_to_bytes
from retina_otel.traces.builder import BuilderSettings, SpanBuilder
from retina_otel.traces.connector import SpanConnector, SpansConfig
from retina_otel.traces.schema import span_views
from retina_otel.traces.targets import compile_targets

N_PODS = 1000
PER_BATCH = 2000
ROWS_PER_CONNECTION = 12
T0 = 1_800_000_000 * 10**9
# (is_reply, flags, packets, bytes) of each report of one connection, in order.
PLAN = [
    (0, (TcpFlag.SYN,), 1, 60),
    (1, (TcpFlag.SYNACK,), 1, 60),
    (0, (TcpFlag.ACK, TcpFlag.PSH), 3, 400),
    (1, (TcpFlag.ACK, TcpFlag.PSH), 2, 1200),
    (0, (TcpFlag.FIN, TcpFlag.ACK), 1, 52),
    (1, (TcpFlag.FIN, TcpFlag.ACK), 1, 52),
]


def _entries() -> tuple[dict[str, Any], ...]:
    return tuple(
        {"k8s.pod.name": f"pod-{i}", "k8s.namespace.name": f"ns-{i % 20}", "k8s.workload.name": f"app-{i % 50}",
         "retina.endpoint.kind": "pod"}
        for i in range(N_PODS)
    )  # fmt: skip


def _addresses(ids: np.ndarray) -> np.ndarray:
    out = np.tile(np.frombuffer(ip_to_bytes("198.18.0.0"), dtype=np.uint8), (ids.shape[0], 1))
    out[:, 14] = (ids // 250).astype(np.uint8)
    out[:, 15] = (ids % 250 + 1).astype(np.uint8)
    return out.view("V16").ravel()


def make_batch(index: int, n: int = PER_BATCH, entries: tuple[dict[str, Any], ...] = ()) -> FlowBatch:
    """``n`` short connections (client pod -> server pod:8080), each as 12 reports, time-ordered."""
    rng = np.random.default_rng(index)
    client = rng.integers(0, N_PODS, n)
    server = (client + 1 + rng.integers(0, N_PODS - 1, n)) % N_PODS
    port = (1024 + (index * n + np.arange(n)) % 60000).astype(np.uint16)  # unique within a run
    start = T0 + index * 10**9 + np.arange(n, dtype=np.uint64) * 400_000
    batch = FlowBatch.empty(n * ROWS_PER_CONNECTION, receiver="bench")
    r = batch.records
    c_ip, s_ip = _addresses(client), _addresses(server)
    for step, (reply, flags, packets, nbytes) in enumerate(PLAN):
        for side, obs in enumerate(
            (ObservationPoint.TO_ENDPOINT, ObservationPoint.FROM_ENDPOINT)
            if reply
            else (ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_ENDPOINT)
        ):
            rows = slice((2 * step + side) * n, (2 * step + side + 1) * n)
            r["src_ip"][rows], r["dst_ip"][rows] = (s_ip, c_ip) if reply else (c_ip, s_ip)
            r["src_port"][rows], r["dst_port"][rows] = (8080, port) if reply else (port, 8080)
            r["src_endpoint"][rows], r["dst_endpoint"][rows] = (server, client) if reply else (client, server)
            r["observation_point"][rows] = obs
            r["is_reply"][rows] = reply
            r["time_start_ns"][rows] = r["time_end_ns"][rows] = start + np.uint64(step * 50_000 + side * 20_000)
            r["packets"][rows], r["bytes"][rows] = packets, nbytes
            for flag in flags:
                r["tcp_flags"][rows, flag] = 1
    r["proto"], r["ip_version"], r["event"], r["verdict"] = 6, 4, 1, 1
    batch.endpoints = EndpointTable(entries)
    return batch


TARGETS = [{"captureLevel": "FirstPacket", "traceTargets": [{"to": {"ipBlock": {"cidr": "198.18.0.0/15"}}}]}]


def _builder(**settings: Any) -> tuple[SpanBuilder, list[int]]:
    now = [T0]
    targets = compile_targets([TraceConfiguration.model_validate(t) for t in TARGETS])
    builder = SpanBuilder(BuilderSettings(close_delay_ns=0, **settings), targets, clock=lambda: now[0])
    return builder, now


def _build(batches: list[FlowBatch]) -> tuple[float, int, list[Any]]:
    builder, now = _builder()
    out = []
    started = time.thread_time()
    for i, batch in enumerate(batches):
        now[0] = T0 + (i + 1) * 10**9
        builder.add(batch)
        spans = builder.take()
        if spans is not None:
            out.append(spans)
    return time.thread_time() - started, sum(len(s) for s in out), out


def _python_baseline(batch: FlowBatch, limit: int = 24_000) -> float:
    """Seconds per row of a per-row dict aggregation keyed by the oriented 5-tuple (no ids, no spans)."""
    rows = batch.records[:limit]
    table: dict[tuple[bytes, bytes, int, int, int], list[int]] = {}
    started = time.thread_time()
    for r in rows:
        reply = bool(r["is_reply"])
        a, b = (r["dst_ip"], r["src_ip"]) if reply else (r["src_ip"], r["dst_ip"])
        pa, pb = (int(r["dst_port"]), int(r["src_port"])) if reply else (int(r["src_port"]), int(r["dst_port"]))
        key = (a.tobytes(), b.tobytes(), pa, pb, int(r["observation_point"]))
        entry = table.setdefault(key, [0, 0, 0])
        entry[reply] += int(r["packets"])
        entry[2] = max(entry[2], int(r["time_end_ns"]))
    return (time.thread_time() - started) / len(rows)


def _export_costs(batches: list[Any]) -> tuple[float, float]:
    """Seconds per span of what the OTLP exporter does: SDK spans (views included), then the SDK's encoding."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource

    from retina_otel.exporters.otlp.traces import spans_to_readable

    n = sum(len(b) for b in batches)
    started = time.thread_time()
    readable = [spans_to_readable(b, Resource({})) for b in batches]
    sdk = time.thread_time() - started
    started = time.thread_time()
    for spans in readable:
        encode_spans(spans).SerializeToString()
    return sdk / n * 1e6, (time.thread_time() - started) / n * 1e6


def _zero_cost(batches: list[FlowBatch]) -> float:
    class Sink:
        def consume_spans(self, batch: Any) -> None:
            return None

    connector = SpanConnector(CreateSettings("spans", "connector"), SpansConfig(), Sink())
    started = time.thread_time()
    for batch in batches:
        connector.consume_flows(batch)
    return time.thread_time() - started


def _table_memory(n: int = 65_536) -> tuple[float, float, int]:
    tracemalloc.start()
    builder, _ = _builder(max_connections=n)
    entries = _entries()
    for i in range(n // PER_BATCH + 1):
        batch = make_batch(1000 + i, PER_BATCH, entries)
        # only SYN and data reports: connections stay open
        keep = (batch.records["tcp_flags"][:, TcpFlag.FIN] == 0)
        batch.records = batch.records[keep]
        builder.add(batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table = builder.table
    held = table.rows.nbytes + table.ep_a.nbytes + table.ep_b.nbytes + 8 * 3 * table.capacity  # + free list, index
    return peak / 2**20, held / 2**20, builder.open_connections


def run(quick: bool) -> dict[str, Any]:
    entries = _entries()
    n_batches = 10 if quick else 60
    batches = [make_batch(i, PER_BATCH, entries) for i in range(n_batches)]
    connections = n_batches * PER_BATCH
    _build(batches[:2])  # warm-up (imports, first allocations)
    cpu, n_spans, spans = _build(batches)
    assert n_spans == 2 * connections, n_spans
    per_min = connections / cpu * 60
    sample = spans[: max(1, len(spans) // 10)]
    started = time.thread_time()
    views = sum(1 for s in sample for _ in span_views(s))
    view_us = (time.thread_time() - started) / views * 1e6
    sdk_us, encode_us = _export_costs(sample)
    zero = _zero_cost(batches)
    py_row = _python_baseline(batches[0])
    rows = n_batches * PER_BATCH * ROWS_PER_CONNECTION
    memory_mb, table_mb, held = _table_memory()
    return {
        "rows": [
            {"what": "span building (add + take, ids, events join)", "connections": connections,
             "reports": rows, "spans": n_spans, "cpu_s": round(cpu, 3),
             "connections_per_min": int(per_min), "us_per_report": round(cpu / rows * 1e6, 3)},
            {"what": "span views for export (name, attributes, events)", "spans": views,
             "us_per_span": round(view_us, 1)},
            {"what": "SDK spans for the OTLP exporter (views included)", "spans": views,
             "us_per_span": round(sdk_us, 1)},
            {"what": "OTLP protobuf encoding by the SDK", "spans": views, "us_per_span": round(encode_us, 1)},
            {"what": "baseline: no trace configuration (consume_flows returns)", "reports": rows,
             "cpu_s": round(zero, 4), "us_per_report": round(zero / rows * 1e6, 4)},
            {"what": "baseline: per-row Python dict aggregation (sample)", "us_per_report": round(py_row * 1e6, 3),
             "connections_per_min": int(60 / (py_row * ROWS_PER_CONNECTION))},
            {"what": "connection table full (65,536 open connections)", "open": held,
             "table_mb": round(table_mb, 1), "peak_traced_mb_with_input_batches": round(memory_mb, 1)},
        ],
        "targets": {"connections_per_min": ">= 200000 on one core", "met": per_min >= 200_000},
        "notes": "CPU time of the benchmark thread; two spans per connection (both ends on this node).",
    }
