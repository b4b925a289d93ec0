"""Spans: the traces signal, carried through the pipeline as columnar batches like flow records.

A :class:`SpanBatch` is one numpy structured array (:data:`SPAN_DTYPE`, one row per span) and an
array of span events (:data:`EVENT_DTYPE`, each span's events contiguous, found through
``event_start``/``event_count``). A span row embeds a flow-record row (``flow``, :data:`FLOW_DTYPE`)
oriented from the connection's initiator (``src``) to its responder (``dst``), with the totals of the
whole connection, so the span's attributes are the flow-record attributes with the names of
:mod:`retina_otel.flowschema` (``source.address``, ``destination.k8s.pod.name``, ...). Only exporters
turn rows into per-span objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from retina_otel.flows import FLOW_DTYPE, EndpointTable, FlowBatch, copy_rows
from retina_otel.signals import Signal, register_signal

__all__ = [
    "EVENT_DTYPE",
    "SPAN_DTYPE",
    "TRACES",
    "CloseReason",
    "EventKind",
    "SpanBatch",
    "SpanConsumer",
    "SpanKind",
    "StatusCode",
]


class SpanKind(IntEnum):
    """OTLP's ``Span.SpanKind`` numbers."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3


class StatusCode(IntEnum):
    """OTLP's ``Status.StatusCode`` numbers."""

    UNSET = 0
    OK = 1
    ERROR = 2


class CloseReason(IntEnum):
    """Why a connection's span ended (attribute ``retina.span.close_reason``)."""

    FIN = 1  # FIN both ways
    RST = 2  # reset after the handshake (or without one seen)
    REFUSED = 3  # reset by the responder before any SYN-ACK
    IDLE = 4  # no packet for the idle timeout
    SHUTDOWN = 5  # the agent stopped or the trace configuration no longer covers it
    DNS = 6  # a DNS query span (ends at the response)


class EventKind(IntEnum):
    DROP = 1  # dropreason: packets of the connection dropped (reason in ``reason``)
    RETRANSMIT = 2  # tcpretrans: segments retransmitted
    REPORT = 3  # captureLevel AllPackets: one packetparser report of the connection


SPAN_DTYPE = np.dtype(
    [
        ("flow", FLOW_DTYPE),  # the connection as a flow record: src = initiator, totals both ways
        ("trace_id", "V16"),
        ("span_id", "V8"),
        ("parent_span_id", "V8"),  # all zero: a root span
        ("kind", "u1"),  # SpanKind
        ("status", "u1"),  # StatusCode
        ("close_reason", "u1"),  # CloseReason
        ("pad", "V1"),
        ("drops", "<u4"),  # dropped packets matched to the connection
        ("event_start", "<u4"),  # index of the first event in SpanBatch.events
        ("event_count", "<u4"),
        ("dropped_events", "<u4"),  # events not kept (per-span limit); OTLP dropped_events_count
    ]
)

EVENT_DTYPE = np.dtype(
    [
        ("time_ns", "<u8"),
        ("packets", "<u8"),  # DROP: packets dropped; RETRANSMIT: segments; REPORT: packets in the report
        ("bytes", "<u8"),
        ("kind", "u1"),  # EventKind
        ("is_reply", "u1"),  # REPORT: 1 when the packets went responder -> initiator
        ("tcp_flags", "<u2"),  # REPORT: bit i set when TcpFlag i was counted
        ("reason", "<u4"),  # DROP: STRINGS id of the kernel's drop reason
    ]
)

SpanArray = npt.NDArray[np.void]


@dataclass(slots=True)
class SpanBatch:
    """A batch of finished spans. ``dns`` holds, when set, one entry per span (``None`` for spans that
    are not DNS queries) as in :class:`~retina_otel.flows.FlowBatch`; ``endpoints`` is the table the
    embedded flow rows' endpoint indices point into; ``attributes`` are resource-level attributes."""

    records: SpanArray
    events: npt.NDArray[np.void] = field(default_factory=lambda: np.zeros(0, dtype=EVENT_DTYPE))
    dns: list[Mapping[str, Any] | None] | None = None
    endpoints: EndpointTable = field(default_factory=EndpointTable)
    attributes: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.records.shape[0])

    @classmethod
    def empty(cls, n: int) -> SpanBatch:
        records = np.zeros(n, dtype=SPAN_DTYPE)
        records["flow"]["src_endpoint"] = -1
        records["flow"]["dst_endpoint"] = -1
        return cls(records=records)

    def flows(self) -> FlowBatch:
        """The embedded flow rows as a :class:`FlowBatch` (a view, no copy), for attribute naming."""
        return FlowBatch(records=self.records["flow"], dns=self.dns, endpoints=self.endpoints)

    def span_events(self, i: int) -> npt.NDArray[np.void]:
        start = int(self.records["event_start"][i])
        return self.events[start : start + int(self.records["event_count"][i])]

    def copy(self) -> SpanBatch:
        """A batch that can be changed without touching this one (endpoint table shared: immutable)."""
        return SpanBatch(
            records=copy_rows(self.records),
            events=copy_rows(self.events),
            dns=None if self.dns is None else list(self.dns),
            endpoints=self.endpoints,
            attributes=dict(self.attributes),
        )

    def mark_read_only(self) -> None:
        """Make numpy refuse writes (a batch shared by several consumers)."""
        self.records.flags.writeable = False
        self.events.flags.writeable = False

    def is_read_only(self) -> bool:
        return not self.records.flags.writeable

    def split(self, n: int) -> tuple[SpanBatch, SpanBatch]:
        """The first ``n`` spans (with their events) and the rest."""
        head_records, tail_records = self.records[:n], self.records[n:].copy()
        cut = int(tail_records["event_start"][0]) if len(tail_records) else len(self.events)
        tail_records["event_start"] -= np.uint32(cut)
        head = SpanBatch(
            head_records,
            self.events[:cut],
            self.dns[:n] if self.dns is not None else None,
            self.endpoints,
            self.attributes,
        )
        tail = SpanBatch(
            tail_records,
            self.events[cut:],
            self.dns[n:] if self.dns is not None else None,
            self.endpoints,
            self.attributes,
        )
        return head, tail


@runtime_checkable
class SpanConsumer(Protocol):
    def consume_spans(self, batch: SpanBatch) -> None:
        """Take a batch of finished spans. Must not block for long (exporters queue)."""


TRACES = register_signal(
    Signal(
        "traces",
        "consume_spans",
        copy=SpanBatch.copy,
        mark_read_only=SpanBatch.mark_read_only,
        is_read_only=SpanBatch.is_read_only,
        size=len,
    )
)
"""The traces signal: :class:`SpanBatch` through ``consume_spans`` (pipelines ``traces[/name]``)."""
