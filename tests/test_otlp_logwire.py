"""The columnar flow-log encoder writes what the SDK path (LogRecord objects + the SDK's encoder) writes:
both encodings of the same batch, decoded with opentelemetry-proto's own messages, are equal field by
field (attributes compared as sets)."""

from __future__ import annotations

import ipaddress
import types
from typing import Any

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk.resources import Resource

from retina_otel.exporters.otlp import convert
from retina_otel.exporters.otlp.convert import SCOPE, flows_to_log_records
from retina_otel.exporters.otlp.logwire import encode_flow_logs
from retina_otel.flows import STRINGS, EndpointTable, FieldMask, FlowBatch, TcpFlag, ip_to_bytes

NOW = 1_790_000_000_123_456_789
BASE = Resource.create({"service.name": "retina-otel", "k8s.node.name": "node-1", "k8s.cluster.name": "c1"})
U64 = 2**64 - 1

ENTRIES = (
    {
        "k8s.namespace.name": "default",
        "k8s.pod.name": "web-1",
        "k8s.pod.uid": "u-1",
        "retina.endpoint.kind": "pod",
        "retina.endpoint.local": True,
        "k8s.workload.kind": "Deployment",
        "k8s.workload.name": "web",
        "k8s.pod.label.app": "web",
        "cloud.availability_zone": "",
    },
    {
        "k8s.namespace.name": "kube-system",
        "k8s.service.name": "kube-dns",
        "retina.endpoint.kind": "service",
        "retina.endpoint.local": False,
        "k8s.pod.name": None,
    },
    {"retina.endpoint.kind": "world", "network.name": "internet"},
)


def _canonical(message: ExportLogsServiceRequest) -> dict[str, Any]:
    d = MessageToDict(message)
    for rl in d.get("resourceLogs", []):
        rl["resource"]["attributes"] = sorted(rl["resource"]["attributes"], key=lambda a: a["key"])
        for sl in rl["scopeLogs"]:
            for lr in sl["logRecords"]:
                lr["attributes"] = sorted(lr.get("attributes", []), key=lambda a: a["key"])
    return d


def _old(batch: FlowBatch) -> ExportLogsServiceRequest:
    saved = getattr(convert, "time")  # noqa: B009 - the module's clock, fixed for the comparison
    setattr(convert, "time", types.SimpleNamespace(time_ns=lambda: NOW))  # noqa: B010
    try:
        return encode_logs(flows_to_log_records(batch, BASE))
    finally:
        setattr(convert, "time", saved)  # noqa: B010


def _new(batch: FlowBatch) -> ExportLogsServiceRequest:
    message: ExportLogsServiceRequest = ExportLogsServiceRequest.FromString(
        encode_flow_logs(batch, BASE, SCOPE, now=NOW)
    )
    return message


def assert_same(batch: FlowBatch) -> None:
    old, new = _canonical(_old(batch)), _canonical(_new(batch))
    if old != new:  # narrow the difference down for the report
        old_records = old["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        new_records = new["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        assert len(old_records) == len(new_records)
        for i, (a, b) in enumerate(zip(old_records, new_records, strict=True)):
            assert a == b, f"row {i}"
        assert old == new


_DROP = [STRINGS.intern(name) for name in ("NETFILTER_DROP", "TCP_INVALID_SEQUENCE", "NO_SOCKET")]
_ints = st.one_of(st.integers(0, 5), st.integers(0, 2**32), st.integers(2**62, U64))


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    v6 = draw(st.booleans())
    addr = st.integers(0, 2**17 - 1).map(lambda i: ipaddress.ip_address("2001:db8::" if v6 else "198.18.0.0") + i)
    event = draw(st.sampled_from([0, 1, 2, 3, 4]))
    dns = None
    if event == 4 and draw(st.booleans()):
        dns = {
            "query": draw(st.sampled_from(["example.com.", "a.b.svc.cluster.local.", ""])),
            "answers": draw(st.lists(st.sampled_from(["198.18.0.1", "2001:db8::1", "x.example."]), max_size=3)),
            "query_type": draw(st.sampled_from(["A", "AAAA", ""])),
            "return_code": draw(st.sampled_from(["NOERROR", "NXDOMAIN", ""])),
        }
    return {
        "src_ip": ip_to_bytes(draw(addr)),
        "dst_ip": ip_to_bytes(draw(addr)),
        "ip_version": 6 if v6 else 4,
        "proto": draw(st.sampled_from([6, 17, 1, 58, 132, 47])),
        "event": event,
        "direction": draw(st.integers(0, 2)),
        "observation_point": draw(st.integers(0, 5)),
        "verdict": draw(st.integers(0, 2)),
        "is_reply": draw(st.integers(0, 1)),
        "src_port": draw(st.integers(0, 65535)),
        "dst_port": draw(st.sampled_from([53, 80, 443, 0, 65535])),
        "ifindex": draw(st.sampled_from([0, 1, 987654])),
        "packets": draw(_ints),
        "bytes": draw(_ints),
        "reply_packets": draw(_ints),
        "reply_bytes": draw(_ints),
        "time_start_ns": draw(st.sampled_from([0, NOW - 10**9, U64])),
        "time_end_ns": draw(st.sampled_from([0, NOW - 1])),
        "tcp_flags": draw(st.lists(st.integers(0, 3), min_size=len(TcpFlag), max_size=len(TcpFlag))),
        "drop_reason": draw(st.sampled_from([0, *_DROP])),
        "retransmits": draw(st.sampled_from([0, 1, 7])),
        "srtt_us": draw(st.sampled_from([0, 250])),
        "handshake_us": draw(st.sampled_from([0, 1200])),
        "dns_id": draw(st.integers(0, 65535)),
        "dns_qtype": draw(st.sampled_from([1, 28])),
        "dns_rcode": draw(st.integers(0, 5)),
        "dns_is_response": draw(st.integers(0, 1)),
        "dns_answer_count": draw(st.integers(0, 3)),
        "dns_latency_us": draw(st.sampled_from([0, 900])),
        "src_endpoint": draw(st.integers(-1, len(ENTRIES))),  # -1 and len(ENTRIES): unknown
        "dst_endpoint": draw(st.integers(-1, len(ENTRIES))),
        "_dns": dns,
    }


def make_batch(values: list[dict[str, Any]], **kwargs: Any) -> FlowBatch:
    batch = FlowBatch.empty(len(values), receiver="test")
    for i, row in enumerate(values):
        for key, value in row.items():
            if not key.startswith("_"):
                batch.records[key][i] = value
    if any(row["_dns"] for row in values):
        batch.dns = [row["_dns"] for row in values]
    batch.endpoints = EndpointTable(ENTRIES)
    for key, value in kwargs.items():
        setattr(batch, key, value)
    return batch


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), min_size=1, max_size=40))
def test_random_batches_encode_as_the_sdk_does(values: list[dict[str, Any]]) -> None:
    assert_same(make_batch(values, attributes={"receiver": "packetparser", "k8s.node.name": "node-1"}))


_MASKS = st.sampled_from(
    [
        (FieldMask(drop=frozenset({"source.k8s.*", "retina.flow.bytes"})),),
        (FieldMask(keep=frozenset({"source.address", "destination.*", "dns.*"})),),
        (FieldMask(drop=frozenset({"network.type"})), FieldMask(keep=frozenset({"network.*", "retina.tcp.*"}))),
    ]
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), min_size=1, max_size=20), _MASKS)
def test_field_masks_apply_as_in_the_sdk_path(values: list[dict[str, Any]], masks: tuple[FieldMask, ...]) -> None:
    assert_same(make_batch(values, masks=masks))


def test_a_large_realistic_batch() -> None:
    n = 3000
    rng = np.random.default_rng(7)
    batch = FlowBatch.empty(n, receiver="packetparser")
    r = batch.records
    r["src_ip"] = [ip_to_bytes(ipaddress.ip_address("198.18.0.0") + int(i)) for i in rng.integers(0, 50, n)]
    r["dst_ip"] = ip_to_bytes("198.19.0.1")
    r["ip_version"] = 4
    r["proto"] = 6
    r["event"] = 1
    r["src_port"] = rng.integers(1024, 65535, n)
    r["dst_port"] = 80
    r["packets"] = rng.integers(1, 10**6, n)
    r["bytes"] = rng.integers(1, 10**9, n)
    r["time_start_ns"] = NOW - rng.integers(0, 10**9, n)
    r["time_end_ns"] = NOW
    r["tcp_flags"][:, TcpFlag.SYN] = 1
    r["tcp_flags"][:, TcpFlag.ACK] = rng.integers(0, 200, n)
    r["src_endpoint"] = rng.integers(-1, 3, n)
    r["dst_endpoint"] = 1
    batch.endpoints = EndpointTable(ENTRIES)
    assert_same(batch)


def test_empty_batch_is_an_empty_request() -> None:
    assert encode_flow_logs(FlowBatch.empty(0), BASE, SCOPE) == b""


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(rows(), min_size=1, max_size=6), min_size=2, max_size=4))
def test_address_cache_overflow_starts_over(
    monkeypatch: pytest.MonkeyPatch, batches: list[list[dict[str, Any]]]
) -> None:
    from retina_otel.exporters.otlp import logwire

    monkeypatch.setattr(logwire, "_ADDRESS_CACHE_MAX", 5)  # a few batches fill it, empty it, fill it again
    monkeypatch.setattr(logwire, "_ADDRESS_CACHE", {})
    for values in batches:
        assert_same(make_batch(values))
