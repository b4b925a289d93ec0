"""OTLP flow-log export: CPU per record, the SDK path and the columnar path side by side, same batches.

Batches of 2,000 rows (the exporter's default ``batch_size``), as packetparser hands them on under short
TCP connections: 1,000 pod addresses, endpoint indices into a shared table of pods with labels on both
sides, per-flag TCP counters, every 40th row a drop and every 25th a DNS row with name and answers.
Encoding rows: CPU time of the benchmark thread (numpy and protobuf are single-threaded here) per record
for (old) ``flows_to_log_records`` -> the SDK's ``encode_logs`` -> ``SerializeToString`` and (new)
``encode_flow_logs``; both must give requests of the same size (same content, the equality itself is
tests/test_otlp_logwire.py). Send rows: process CPU per record (both ends: the in-process gRPC receiving
end, which takes the bytes without decoding them, is the same for both) of the SDK's ``OTLPLogExporter``
versus encode + the exporter's own gRPC sender, to a loopback gRPC server. Span rows: bench_spans'
short connections between pods (client and server spans with events), SDK spans + the SDK's encoder
versus :func:`~retina_otel.exporters.otlp.spanwire.encode_spans` (columnar), same batches, same request
size.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from opentelemetry.sdk.resources import Resource

from retina_otel.exporters.otlp.convert import SCOPE, flows_to_log_records
from retina_otel.exporters.otlp.exporter import OtlpConfig
from retina_otel.exporters.otlp.logwire import encode_flow_logs
from retina_otel.exporters.otlp.transport import make_sender
from retina_otel.flows import STRINGS, EndpointTable, Event, FlowBatch, ObservationPoint, TcpFlag, ip_to_bytes

PER_BATCH = 2000
N_PODS = 1000
T0 = 1_800_000_000 * 10**9
RESOURCE = Resource.create({"service.name": "retina-otel", "k8s.node.name": "node-1", "k8s.cluster.name": "prod"})


def _entries() -> EndpointTable:
    return EndpointTable(
        tuple(
            {"k8s.namespace.name": f"ns-{i % 20}", "k8s.pod.name": f"app-{i % 50}-7d9f8c-{i:05d}",
             "k8s.pod.uid": f"4b3c2a10-0000-4000-8000-{i:012d}", "k8s.node.name": f"node-{i % 3}",
             "k8s.workload.kind": "Deployment", "k8s.workload.name": f"app-{i % 50}",
             "k8s.pod.label.app": f"app-{i % 50}", "retina.endpoint.kind": "pod",
             "retina.endpoint.local": i % 3 == 0}
            for i in range(N_PODS)
        )
    )  # fmt: skip


def make_batch(seed: int, entries: EndpointTable) -> FlowBatch:
    rng = np.random.default_rng(seed)
    n = PER_BATCH
    batch = FlowBatch.empty(n, receiver="packetparser")
    r = batch.records
    base = np.frombuffer(ip_to_bytes("198.18.0.0"), np.uint8)
    src, dst = rng.integers(0, N_PODS, n), rng.integers(0, N_PODS, n)
    for column, ids in (("src_ip", src), ("dst_ip", dst)):
        raw = np.tile(base, (n, 1))
        raw[:, 14], raw[:, 15] = ids // 250, ids % 250 + 1
        r[column] = raw.view("V16").reshape(n)
    r["ip_version"], r["proto"], r["event"] = 4, 6, Event.FLOW
    r["direction"] = rng.integers(1, 3, n)
    r["observation_point"] = rng.choice([ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_ENDPOINT], n)
    r["verdict"], r["ifindex"] = 1, 0
    r["is_reply"] = rng.integers(0, 2, n)
    r["src_port"], r["dst_port"] = rng.integers(32768, 61000, n), 8080
    r["packets"], r["bytes"] = rng.integers(1, 4, n), rng.integers(52, 1500, n)
    r["reply_packets"], r["reply_bytes"] = rng.integers(0, 4, n), rng.integers(0, 1500, n)
    r["time_start_ns"] = T0 + seed * 10**9 + rng.integers(0, 5 * 10**8, n)
    r["time_end_ns"] = r["time_start_ns"] + rng.integers(0, 10**8, n)
    r["tcp_flags"][:, TcpFlag.ACK] = rng.integers(0, 3, n)
    r["tcp_flags"][:, TcpFlag.SYN] = rng.integers(0, 2, n)
    r["tcp_flags"][:, TcpFlag.FIN] = rng.integers(0, 2, n)
    r["src_endpoint"], r["dst_endpoint"] = src, dst
    drops = slice(0, n, 40)
    r["event"][drops], r["verdict"][drops] = Event.DROP, 2
    r["observation_point"][drops] = ObservationPoint.STACK
    r["drop_reason"][drops] = STRINGS.intern("NETFILTER_DROP")
    dns_rows = np.arange(5, n, 25)
    r["event"][dns_rows], r["proto"][dns_rows], r["dst_port"][dns_rows] = Event.DNS, 17, 53
    r["dns_id"][dns_rows], r["dns_qtype"][dns_rows], r["dns_is_response"][dns_rows] = 4242, 1, 1
    r["dns_answer_count"][dns_rows], r["dns_latency_us"][dns_rows] = 1, 800
    dns: list[Any] = [None] * n
    for i in dns_rows.tolist():
        dns[i] = {"query": f"svc-{i % 50}.ns.svc.cluster.local.", "answers": ["198.18.3.7"], "query_type": "A",
                  "return_code": "NOERROR"}  # fmt: skip
    batch.dns = dns
    batch.endpoints = entries
    batch.attributes = {"receiver": "packetparser"}
    return batch


def _old(batches: list[FlowBatch]) -> tuple[float, float, float, int]:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    convert = encode = serialize = 0.0
    size = 0
    for batch in batches:
        t0 = time.thread_time()
        records = flows_to_log_records(batch, RESOURCE)
        t1 = time.thread_time()
        message = encode_logs(records)
        t2 = time.thread_time()
        size += len(message.SerializeToString())
        t3 = time.thread_time()
        convert, encode, serialize = convert + t1 - t0, encode + t2 - t1, serialize + t3 - t2
    return convert, encode, serialize, size


def _new(batches: list[FlowBatch]) -> tuple[float, int]:
    size = 0
    started = time.thread_time()
    for batch in batches:
        size += len(encode_flow_logs(batch, RESOURCE, SCOPE))
    return time.thread_time() - started, size


class _Discard(grpc.GenericRpcHandler):
    """A LogsService that takes the request bytes without decoding them."""

    def __init__(self) -> None:
        self.requests = 0

    def service(self, details: Any) -> Any:
        def export(request: bytes, context: Any) -> bytes:
            self.requests += 1
            return b""

        return grpc.unary_unary_rpc_method_handler(export)


def _send_costs(batches: list[FlowBatch]) -> tuple[float, float]:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult

    handler = _Discard()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        sdk = OTLPLogExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=10)
        sender = make_sender(
            OtlpConfig(endpoint=f"127.0.0.1:{port}", tls={"insecure": True}), "grpc", "logs", threading.Event()
        )
        assert sdk.export(flows_to_log_records(batches[0], RESOURCE)) is LogRecordExportResult.SUCCESS  # warm-up
        sender.send(encode_flow_logs(batches[0], RESOURCE, SCOPE))
        started = time.process_time()
        for batch in batches:
            assert sdk.export(flows_to_log_records(batch, RESOURCE)) is LogRecordExportResult.SUCCESS
        old = time.process_time() - started
        started = time.process_time()
        for batch in batches:
            sender.send(encode_flow_logs(batch, RESOURCE, SCOPE))
        new = time.process_time() - started
        sdk.shutdown()
        sender.close()
    finally:
        server.stop(grace=None).wait()
    return old, new


def _span_costs(quick: bool) -> tuple[float, float, float, int]:
    """Seconds of the SDK path and of the direct encoder for the same span batches (bench_spans' short
    connections between pods with metadata), and the span count; both give the same request size."""
    import bench_spans
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode

    from retina_otel.exporters.otlp.spanwire import encode_spans
    from retina_otel.exporters.otlp.traces import spans_to_readable

    entries = bench_spans._entries()
    flows = [bench_spans.make_batch(i, 500, entries) for i in range(2 if quick else 6)]
    _, n, batches = bench_spans._build(flows)
    encode_spans(batches[0], RESOURCE, SCOPE), spans_to_readable(batches[0], RESOURCE)  # warm-up
    started = time.thread_time()
    old_size = sum(len(sdk_encode(spans_to_readable(b, RESOURCE)).SerializeToString()) for b in batches)
    old = time.thread_time() - started
    started = time.thread_time()
    new_size = sum(len(encode_spans(b, RESOURCE, SCOPE)) for b in batches)
    new = time.thread_time() - started
    assert new_size == old_size, (new_size, old_size)
    views = time.thread_time()
    from retina_otel.traces.schema import span_views

    for b in batches:
        for _ in span_views(b):
            pass
    return old, new, time.thread_time() - views, n


def run(quick: bool) -> dict[str, Any]:
    entries = _entries()
    batches = [make_batch(i, entries) for i in range(3 if quick else 15)]
    n = len(batches) * PER_BATCH
    _new(batches[:1]), _old(batches[:1])  # warm-up (imports, first allocations)
    new_cpu, new_size = _new(batches)
    convert, encode, serialize, old_size = _old(batches)
    assert new_size == old_size, (new_size, old_size)  # same content: the same number of bytes
    old_cpu = convert + encode + serialize
    send_old, send_new = _send_costs(batches[: max(2, len(batches) // 3)])
    n_send = max(2, len(batches) // 3) * PER_BATCH

    span_old, span_new, span_views_cpu, n_spans = _span_costs(quick)

    def us(seconds: float, records: int = n) -> float:
        return round(seconds / records * 1e6, 2)

    return {
        "rows": [
            {
                "what": "old: SDK LogRecords -> SDK encode_logs -> serialize",
                "records": n,
                "us_per_record": us(old_cpu),
                "convert_us": us(convert),
                "encode_us": us(encode),
                "serialize_us": us(serialize),
                "records_per_s_per_core": int(n / old_cpu),
                "bytes_per_record": round(old_size / n),
            },
            {
                "what": "new: encode_flow_logs (columnar, no object per record)",
                "records": n,
                "us_per_record": us(new_cpu),
                "records_per_s_per_core": int(n / new_cpu),
                "bytes_per_record": round(new_size / n),
                "speedup": round(old_cpu / new_cpu, 1),
            },
            {
                "what": "old: SDK OTLPLogExporter.export over loopback gRPC (process CPU)",
                "records": n_send,
                "us_per_record": us(send_old, n_send),
                "records_per_s_per_core": int(n_send / send_old),
            },
            {
                "what": "new: encode + exporter's gRPC sender over loopback (process CPU)",
                "records": n_send,
                "us_per_record": us(send_new, n_send),
                "records_per_s_per_core": int(n_send / send_new),
                "speedup": round(send_old / send_new, 1),
            },
            {
                "what": "spans, old: SDK spans -> SDK encode_spans -> serialize",
                "spans": n_spans,
                "us_per_span": us(span_old, n_spans),
                "spans_per_s_per_core": int(n_spans / span_old),
            },
            {
                "what": "spans, new: encode_spans (columnar)",
                "spans": n_spans,
                "us_per_span": us(span_new, n_spans),
                "spans_per_s_per_core": int(n_spans / span_new),
                "speedup": round(span_old / span_new, 1),
            },
            {
                "what": "spans: span_views alone (the old path's first step, not used now)",
                "spans": n_spans,
                "us_per_span": us(span_views_cpu, n_spans),
            },
        ],
        "targets": {"us_per_record_encode": "a few (<= 5)", "met": us(new_cpu) <= 5.0},
        "notes": "CPU time; encode rows: the benchmark thread; send rows: the whole process (sender and the "
        "in-process receiving end, which does not decode). Same batches for both paths.",
    }
