"""Spans written directly as OTLP bytes equal what the SDK path (SDK spans + the SDK's encoder) writes,
decoded with opentelemetry-proto's messages and compared field by field (resources and attributes as
sets)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from retina_otel.exporters.otlp.convert import SCOPE
from retina_otel.exporters.otlp.spanwire import encode_spans
from retina_otel.exporters.otlp.traces import spans_to_readable
from retina_otel.flows import EndpointTable, Event, FlowBatch, ObservationPoint
from retina_otel.traces.spans import SpanBatch
from tests.test_spans_builder import S_PORT, SEC, T0, C, S, builder, connection, drop_row, row
from tests.test_spans_export import spans

BASE = Resource.create({"service.name": "retina-otel", "k8s.node.name": "node-1", "k8s.cluster.name": "c1"})


def _canonical(message: ExportTraceServiceRequest) -> list[Any]:
    out = []
    for rs in MessageToDict(message)["resourceSpans"]:
        rs["resource"]["attributes"] = sorted(rs["resource"]["attributes"], key=lambda a: a["key"])
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                span["attributes"] = sorted(span["attributes"], key=lambda a: a["key"])
                for event in span.get("events", []):
                    event["attributes"] = sorted(event.get("attributes", []), key=lambda a: a["key"])
        out.append(rs)
    return sorted(out, key=lambda rs: repr(rs["resource"]))


@pytest.mark.parametrize("refused", [False, True])
def test_spans_encode_as_the_sdk_does(refused: bool) -> None:
    batch = spans(3, refused=refused)
    batch.attributes = {"receiver": "spans"}
    old = ExportTraceServiceRequest.FromString(sdk_encode_spans(spans_to_readable(batch, BASE)).SerializeToString())
    new = ExportTraceServiceRequest.FromString(encode_spans(batch, BASE, SCOPE))
    assert _canonical(new) == _canonical(old)
    assert len(_canonical(new)) == 2  # client and server ends: two resources


def _assert_same(batch: SpanBatch) -> None:
    old = ExportTraceServiceRequest.FromString(sdk_encode_spans(spans_to_readable(batch, BASE)).SerializeToString())
    new = ExportTraceServiceRequest.FromString(encode_spans(batch, BASE, SCOPE))
    assert _canonical(new) == _canonical(old)


def test_events_dns_and_dropped_events_encode_as_the_sdk_does() -> None:
    b, clock = builder([{"captureLevel": "AllPackets", "traceTargets": [{}]}], idle_timeout_other_ns=5 * SEC)
    b.add(connection(41234, T0))
    b.add(connection(41235, T0))
    events = FlowBatch.empty(2)
    drop_row(events, 0, 41234, T0 + 2500, 3)
    row(events, 1, src=C, dst=S, sport=41234, dport=S_PORT, obs=ObservationPoint.STACK, reply=False,
        t=T0 + 2600, event=Event.RETRANSMIT)  # fmt: skip
    events.records["retransmits"][1] = 2
    b.add(events)
    udp = FlowBatch.empty(3)
    row(udp, 0, src=C, dst=S, sport=3333, dport=53, obs=ObservationPoint.FROM_ENDPOINT, reply=False, t=T0, proto=17)
    row(udp, 1, src=S, dst=C, sport=53, dport=5555, obs=ObservationPoint.UNKNOWN, reply=True, t=T0 + 1500_000,
        proto=17, event=Event.DNS)  # fmt: skip
    row(udp, 2, src=C, dst=S, sport=4444, dport=9, obs=ObservationPoint.FROM_ENDPOINT, reply=False, t=T0, proto=1)
    udp.records["dns_is_response"][1], udp.records["dns_rcode"][1] = 1, 3
    udp.dns = [None, {"query": "checkout.shop.svc.cluster.local.", "return_code": "NXDOMAIN"}, None]
    udp.endpoints = EndpointTable(({"k8s.pod.name": "client", "k8s.workload.name": ""},))
    udp.records["src_endpoint"][0] = 0
    b.add(udp)
    clock.now += 10 * SEC
    out = b.take()
    assert out is not None and len(out) >= 5 and len(out.events) >= 4
    out = out.copy()
    out.records["dropped_events"][0] = 3
    _assert_same(out)
    head, tail = out.split(2)
    _assert_same(head)
    _assert_same(tail)


@pytest.mark.parametrize("rcode", [0, 3])
def test_dns_spans_encode_as_the_sdk_does(rcode: int) -> None:
    b, _ = builder()
    batch = FlowBatch.empty(1)
    row(batch, 0, src=S, dst=C, sport=53, dport=3333, obs=ObservationPoint.UNKNOWN, reply=True, t=T0 + 1500_000,
        proto=17, event=Event.DNS)  # fmt: skip
    r = batch.records
    r["dns_is_response"][0], r["dns_latency_us"][0], r["dns_id"][0], r["dns_rcode"][0] = 1, 1500, 77, rcode
    batch.dns = [{"query": "checkout.shop.svc.cluster.local.", "query_type": "A", "return_code": "NXDOMAIN"}]
    b.add(batch)
    out = b.take()
    assert out is not None and len(out) == 1
    _assert_same(out)
    decoded = ExportTraceServiceRequest.FromString(encode_spans(out, BASE, SCOPE))
    span = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert span.name == "checkout.shop.svc.cluster.local."
