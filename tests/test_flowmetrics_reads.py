"""flowmetrics declares the flow-record fields it reads (``READS``); the service leaves a processor out
of a pipeline when nothing after it reads the fields it fills. This keeps the declaration honest: every
metric, every context label, both contexts and the node metrics run over a varied batch while the
records' field accesses are recorded, and each one must be declared."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from retina_otel.flows import FLOW_DTYPE, Direction, Event, FlowBatch, Verdict
from retina_otel.processors.flowmetrics import READS
from retina_otel.processors.flowmetrics.spec import CONTEXT_OPTIONS, RETINA_NAMES
from tests.test_flowmetrics import make, processor, row

_touched: set[str] = set()


class _RecordingArray(np.ndarray):  # type: ignore[type-arg]
    """A structured array that notes every field read by name."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            _touched.add(key)
        elif isinstance(key, list) and all(isinstance(k, str) for k in key):
            _touched.update(key)
        return super().__getitem__(key)


def _varied_batch() -> FlowBatch:
    batch = make(8)
    row(batch, 0, 0, 1, packets=3, bytes=300, tcp_flags=[1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    row(batch, 1, 1, 0, is_reply=1, direction=Direction.INGRESS, packets=2, bytes=120)
    row(batch, 2, 0, 2, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=3, packets=1, bytes=60)
    row(batch, 3, 0, -1, event=Event.RETRANSMIT, packets=1)
    row(batch, 4, 0, -1, event=Event.DNS, proto=17, dport=53, dns_qtype=1)
    row(batch, 5, -1, 0, event=Event.DNS, proto=17, sport=53, dport=40000, direction=Direction.INGRESS,
        dns_qtype=1, dns_is_response=1, dns_answer_count=1, dns_latency_us=900)  # fmt: skip
    row(batch, 6, 2, -1, packets=5, bytes=500, srtt_us=70, handshake_us=90)
    row(batch, 7, -1, 1, proto=17, packets=1, bytes=64, direction=Direction.INGRESS)
    batch.dns = [None] * 4 + [
        {"query": "example.test.", "query_type": "A"},
        {"query": "example.test.", "query_type": "A", "answers": ["198.18.5.1"]},
        None,
        None,
    ]
    recording: npt.NDArray[Any] = batch.records.view(_RecordingArray)
    batch.records = recording
    return batch


def _every_metric(remote: bool) -> dict[str, Any]:
    """Every metric with every context label, the node metrics, one context."""
    every_label = list(CONTEXT_OPTIONS)
    return {
        "remote_context": remote,
        "node_metrics": True,
        "metrics": [
            {
                "metricName": name,
                "sourceLabels": every_label,
                "destinationLabels": every_label,
                "additionalLabels": ["is_reply"],
            }
            for name in RETINA_NAMES.values()
        ],
    }


@pytest.mark.parametrize("remote", [False, True])
def test_flowmetrics_reads_only_declared_fields(remote: bool) -> None:
    _touched.clear()
    proc, _host = processor(_every_metric(remote))
    proc.consume_flows(_varied_batch())
    assert _touched, "the recording array saw no field access"
    assert _touched <= READS, f"flowmetrics reads undeclared fields: {sorted(_touched - READS)}"


def test_reads_leaves_out_only_the_rtt_columns() -> None:
    assert set(FLOW_DTYPE.names or ()) - READS == {"srtt_us", "handshake_us"}


def _split_flows(batch: FlowBatch) -> FlowBatch:
    """Every forwarded-flow record with more than one packet as two records of the same flow, the counters
    divided between them (what a coarser or finer report rule does); other records as they are."""
    records = np.asarray(batch.records)
    parts = []
    for i in range(len(records)):
        rec = records[i : i + 1].copy()
        if rec["event"][0] != Event.FLOW or rec["packets"][0] < 2:
            parts.append(rec)
            continue
        first, second = rec.copy(), rec.copy()
        for name in ("packets", "bytes", "reply_packets", "reply_bytes", "tcp_flags"):
            first[name] = rec[name] // 2
            second[name] = rec[name] - first[name]
        parts += [first, second]
    out = FlowBatch.empty(0, receiver=batch.receiver)
    out.records = np.concatenate(parts)
    out.endpoints = batch.endpoints
    return out


@pytest.mark.parametrize("remote", [False, True])
def test_flowmetrics_only_sums_each_flows_records(remote: bool) -> None:
    """flowmetrics declares ``sums_flows``: a receiver may then write a flow's counts in fewer records
    (packetparser's ``report_rule: close``). Every metric, context label and node metric over a batch of
    forwarded flows, and over the same flows each split in two records: the same series and values."""
    from retina_otel.processors.flowmetrics import CONNECTOR_FACTORY, FACTORY

    assert FACTORY.sums_flows and CONNECTOR_FACTORY.sums_flows
    config = _every_metric(remote)
    batch = make(5)
    row(batch, 0, 0, 1, packets=3, bytes=300, tcp_flags=[1, 1, 0, 3, 0, 2, 0, 0, 0, 0], reply_packets=2)
    row(batch, 1, 1, 0, is_reply=1, direction=Direction.INGRESS, packets=2, bytes=120, tcp_flags=[1, 0, 1, 2] + [0] * 6)
    row(batch, 2, 2, -1, packets=5, bytes=500)
    row(batch, 3, -1, 1, proto=17, packets=4, bytes=256, direction=Direction.INGRESS)
    row(batch, 4, 0, 2, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=3, packets=1, bytes=60)
    whole, whole_host = processor(config)
    split, split_host = processor(config)
    whole.consume_flows(batch)
    split_batch = _split_flows(batch)
    assert len(split_batch) == 9
    split.consume_flows(split_batch)
    families = {f.name: f.snapshot() for f in whole_host.metrics.families()}
    assert any(snap.series for snap in families.values())
    for family in split_host.metrics.families():
        got = {labels: value for labels, value, _ in family.snapshot().series}
        want = {labels: value for labels, value, _ in families[family.name].series}
        assert got == want, family.name
