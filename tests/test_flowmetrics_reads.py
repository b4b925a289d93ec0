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


@pytest.mark.parametrize("remote", [False, True])
def test_flowmetrics_reads_only_declared_fields(remote: bool) -> None:
    _touched.clear()
    every_label = list(CONTEXT_OPTIONS)
    proc, _host = processor(
        {
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
    )
    proc.consume_flows(_varied_batch())
    assert _touched, "the recording array saw no field access"
    assert _touched <= READS, f"flowmetrics reads undeclared fields: {sorted(_touched - READS)}"


def test_reads_leaves_out_only_the_rtt_columns() -> None:
    assert set(FLOW_DTYPE.names or ()) - READS == {"srtt_us", "handshake_us"}
