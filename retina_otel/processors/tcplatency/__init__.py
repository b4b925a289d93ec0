"""The ``tcplatency`` processor: puts each TCP flow's smoothed RTT and handshake latency on its record.

Reads the per-flow table of the ``tcplatency`` receiver (the ``tcp_latency`` extension) and fills
``srtt_us`` and ``handshake_us`` of TCP rows, looking each distinct 5-tuple of a batch up once. Rows
whose flow the receiver has not seen keep 0 (unknown). Without the receiver it passes batches through.
In a pipeline where nothing after it reads those two fields (the default config's flow records end in
flowmetrics only) the service leaves it out (``Factory.fills``). Where only exporters that read records on
demand do (the observer, while a client follows live flows) it gets the agent's event demand and joins,
and has the receiver keep its per-flow table, only while that is held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.extension_keys import TCP_LATENCY, LatencySource
from retina_otel.flows import FlowBatch

__all__ = ["FACTORY", "TcpLatencyProcessor", "TcpLatencyProcessorConfig"]

log = logging.getLogger(__name__)


class _Table(Protocol):
    def __len__(self) -> int: ...

    def join(
        self, src: npt.NDArray[Any], dst: npt.NDArray[Any], sport: npt.NDArray[Any], dport: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], npt.NDArray[np.bool_]]: ...


class TcpLatencyProcessorConfig(ComponentConfig):
    pass


class TcpLatencyProcessor:
    def __init__(self, settings: CreateSettings, next_consumer: FlowConsumer) -> None:
        self.id = settings.id
        self._next = next_consumer
        self._source: LatencySource | None = None
        self._demand = settings.event_demand  # join only while held (None: always)
        self._unsubscribe: Callable[[], None] | None = None
        self._joining = False
        self._switch_lock = threading.Lock()

    def start(self, host: Host) -> None:
        found = host.get_extension(TCP_LATENCY)
        if found is None:
            log.warning("%s: no tcplatency receiver in this agent; flow records get no RTT", self.id)
            return
        self._source = found
        if self._demand is None:
            found.track_flows()  # before the receivers start: the kernel keeps the per-flow table
            self._joining = True
        else:
            self._unsubscribe = self._demand.subscribe(self._follow_demand)

    def _follow_demand(self, wanted: bool) -> None:
        with self._switch_lock:
            if self._source is None or wanted == self._joining:
                return
            if wanted:
                self._source.track_flows()
            else:
                self._source.untrack_flows()
            self._joining = wanted
        log.info("%s: RTT on flow records %s", self.id, "on (a client follows live flows)" if wanted else "off")

    def shutdown(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._follow_demand(False)
        self._source = None

    def consume_flows(self, batch: FlowBatch) -> None:
        source = self._source
        if source is not None and self._joining and len(batch):
            annotate(batch, source.table())
        self._next.consume_flows(batch)


def annotate(batch: FlowBatch, table: _Table) -> int:
    """Fill srtt_us/handshake_us of TCP rows from ``table``; returns how many rows were annotated.

    The rows' address and port columns are joined with the table in numpy (no Python loop per row: under
    many short connections a per-row loop was the largest part of the agent's CPU)."""
    records = batch.records
    is_tcp = records["proto"] == 6
    every = bool(is_tcp.all())
    tcp = slice(None) if every else np.flatnonzero(is_tcp)
    if not len(table) or not (len(records) if every else len(tcp)):  # type: ignore[arg-type]
        return 0
    srtt, handshake, _known = table.join(
        records["src_ip"][tcp], records["dst_ip"][tcp], records["src_port"][tcp], records["dst_port"][tcp]
    )
    records["srtt_us"][tcp] = srtt
    records["handshake_us"][tcp] = handshake
    return int(np.count_nonzero(srtt | handshake))


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
    mutates_data=True,
    fills=("srtt_us", "handshake_us"),
    sums_flows=True,
)
