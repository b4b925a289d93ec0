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
