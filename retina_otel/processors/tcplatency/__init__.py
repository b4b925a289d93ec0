"""The ``tcplatency`` processor: puts each TCP flow's smoothed RTT and handshake latency on its record.

Reads the per-flow table of the ``tcplatency`` receiver (the ``tcp_latency`` extension) and fills
``srtt_us`` and ``handshake_us`` of TCP rows, looking each distinct 5-tuple of a batch up once. Rows
whose flow the receiver has not seen keep 0 (unknown). Without the receiver it passes batches through.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.flows import FlowBatch

__all__ = ["FACTORY", "TcpLatencyProcessor", "TcpLatencyProcessorConfig"]

log = logging.getLogger(__name__)


class _Table(Protocol):
    def lookup(self, src: bytes, dst: bytes, sport: int, dport: int) -> tuple[int, int] | None: ...


class _Source(Protocol):
    def table(self) -> _Table: ...


class TcpLatencyProcessorConfig(ComponentConfig):
    pass


class TcpLatencyProcessor:
    def __init__(self, settings: CreateSettings, next_consumer: FlowConsumer) -> None:
        self.id = settings.id
        self._next = next_consumer
        self._source: _Source | None = None

    def start(self, host: Host) -> None:
        found = host.get_extension("tcp_latency")
        if found is None:
            log.warning("%s: no tcplatency receiver in this agent; flow records get no RTT", self.id)
        self._source = found  # type: ignore[assignment]

    def shutdown(self) -> None:
        self._source = None

    def consume_flows(self, batch: FlowBatch) -> None:
        if self._source is not None and len(batch):
            annotate(batch, self._source.table())
        self._next.consume_flows(batch)


def annotate(batch: FlowBatch, table: _Table) -> int:
    """Fill srtt_us/handshake_us of TCP rows from ``table``; returns how many rows were annotated."""
    records = batch.records
    tcp = np.flatnonzero(records["proto"] == 6)
    if not len(tcp):
        return 0
    sub = records[tcp]
    keys = np.empty(len(sub), dtype=[("s", "V16"), ("d", "V16"), ("sp", "<u2"), ("dp", "<u2")])
    keys["s"], keys["d"], keys["sp"], keys["dp"] = sub["src_ip"], sub["dst_ip"], sub["src_port"], sub["dst_port"]
    unique, inverse = np.unique(keys, return_inverse=True)
    srtt = np.zeros(len(unique), dtype=np.uint32)
    handshake = np.zeros(len(unique), dtype=np.uint32)
    for i, key in enumerate(unique.tolist()):
        found: Any = table.lookup(bytes(key[0]), bytes(key[1]), int(key[2]), int(key[3]))
        if found is not None:
            srtt[i], handshake[i] = found
    records["srtt_us"][tcp] = srtt[inverse]
    records["handshake_us"][tcp] = handshake[inverse]
    return int(np.count_nonzero(srtt[inverse] | handshake[inverse]))


def _create(
    settings: CreateSettings, _config: TcpLatencyProcessorConfig, next_consumer: FlowConsumer | None
) -> TcpLatencyProcessor:
    assert next_consumer is not None
    return TcpLatencyProcessor(settings, next_consumer)


FACTORY: Factory[TcpLatencyProcessorConfig] = Factory(
    "tcplatency",
    "processor",
    TcpLatencyProcessorConfig,
    _create,
    "smoothed RTT and handshake latency on TCP flow records (needs the tcplatency receiver)",
)
