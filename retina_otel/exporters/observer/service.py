"""Hubble's ``observer.Observer`` methods over a :class:`~retina_otel.exporters.observer.ring.FlowRing`.

``GetFlows`` follows Hubble's request semantics: ``number`` most recent matching flows (the earliest
with ``first``), ``since``/``until`` on the flow's time, ``follow`` to keep streaming. A following
client that falls behind the ring (it reads slower than records arrive) gets a ``lost_events``
message with source HUBBLE_RING_BUFFER and the exact count, counted as well in
``controlplane_networkobservability_lost_events_counter{type="observer",reason="client_too_slow"}``;
the pipeline never waits for a client.

A following client holds the agent's event demand (when the exporter was given one:
``event_records: while_following``), so packetparser writes a record per connection event while it
follows (:mod:`retina_otel.eventdemand`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from retina_otel.eventdemand import EventDemand
from retina_otel.exporters.observer import convert
from retina_otel.exporters.observer.filters import CompiledFilter, UnsupportedFilter, compile_filters, select
from retina_otel.exporters.observer.ring import FlowRing, RingView
from retina_otel.hubble import observer_pb2, relay_pb2, retina_pb2

__all__ = ["ObserverService"]

VERSION = "retina-otel 0.1.0"
READ_CHUNK = 4096  # records taken from the ring per step while following
WAIT = 0.25  # seconds a follower sleeps between checks for a cancelled call


def _ns(ts: object) -> int | None:
    seconds = int(getattr(ts, "seconds", 0))
    nanos = int(getattr(ts, "nanos", 0))
    return seconds * 1_000_000_000 + nanos


class ObserverService:
    def __init__(
        self,
        ring: FlowRing,
        node_name: str,
        count_lost: Callable[[int], None],
        *,
        address: str = "",
        tls: bool = False,
        event_demand: EventDemand | None = None,
    ) -> None:
        self.ring = ring
        self._event_demand = event_demand
        self.node_name = node_name
        self._count_lost = count_lost
        self._address = address
        self._tls = tls
        self._started_ns = time.monotonic_ns()
        self.stopping = threading.Event()

    # -- unary methods ---------------------------------------------------------------------------------

    def _uptime_ns(self) -> int:
        return time.monotonic_ns() - self._started_ns

    def server_status(
        self, _request: observer_pb2.ServerStatusRequest, _context: grpc.ServicerContext
    ) -> observer_pb2.ServerStatusResponse:
        return observer_pb2.ServerStatusResponse(
            num_flows=len(self.ring),
            max_flows=self.ring.capacity,
            seen_flows=self.ring.head,
            uptime_ns=self._uptime_ns(),
            num_connected_nodes={"value": 1},
            num_unavailable_nodes={"value": 0},
            version=VERSION,
        )

    def get_nodes(
        self, _request: observer_pb2.GetNodesRequest, _context: grpc.ServicerContext
    ) -> observer_pb2.GetNodesResponse:
        node = observer_pb2.Node(
            name=self.node_name,
            version=VERSION,
            address=self._address,
            state=relay_pb2.NODE_CONNECTED,
            tls=observer_pb2.TLS(enabled=self._tls),
            uptime_ns=self._uptime_ns(),
            num_flows=len(self.ring),
            max_flows=self.ring.capacity,
            seen_flows=self.ring.head,
        )
        return observer_pb2.GetNodesResponse(nodes=[node])

    # -- GetFlows --------------------------------------------------------------------------------------

    def _filters(self, request: observer_pb2.GetFlowsRequest) -> tuple[list[CompiledFilter], list[CompiledFilter]]:
        extension = retina_pb2.GetFlowsExtension()
        if request.HasField("extensions") and not request.extensions.Unpack(extension):
            raise UnsupportedFilter(f"unknown request extension {request.extensions.type_url!r}")
        return (
            compile_filters(request.whitelist, extension.whitelist, self.node_name),
            compile_filters(request.blacklist, extension.blacklist, self.node_name),
        )

    def get_flows(
        self, request: observer_pb2.GetFlowsRequest, context: grpc.ServicerContext
    ) -> Iterator[observer_pb2.GetFlowsResponse]:
        try:
            whitelist, blacklist = self._filters(request)
        except UnsupportedFilter as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        if request.first and request.follow:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first and follow cannot be combined")
            return
        metadata = request.HasField("extensions")  # a retina-otel client: it reads FlowMetadata
        since = _ns(request.since) if request.HasField("since") else None
        until = _ns(request.until) if request.HasField("until") else None

        def matching(view: RingView) -> RingView:
            keep = select(view, whitelist, blacklist)
            if since is not None or until is not None:
                end = view.records["time_end_ns"]
                if since is not None:
                    keep &= end >= since
                if until is not None:
                    keep &= end <= until
            return view.take(np.flatnonzero(keep))

        # The buffered part: a snapshot of the ring as it is now.
        head = self.ring.head
        history = request.number > 0 or since is not None or until is not None or not request.follow or request.first
        if history:
            _missed, view = self.ring.read(self.ring.oldest())
            chosen = matching(view)
            if request.number:
                n = int(request.number)
                chosen = (
                    chosen.take(np.arange(min(n, len(chosen))))
                    if request.first
                    else chosen.take(np.arange(max(0, len(chosen) - n), len(chosen)))
                )
            head = view.first_seq + len(view)
            yield from convert.flows(chosen, self.node_name, metadata)
        if not request.follow:
            return
        with self._event_demand.hold() if self._event_demand is not None else contextlib.nullcontext():
            yield from self._follow(head, matching, until, context, metadata)

    def _follow(
        self,
        seq: int,
        matching: Callable[[RingView], RingView],
        until: int | None,
        context: grpc.ServicerContext,
        metadata: bool,
    ) -> Iterator[observer_pb2.GetFlowsResponse]:
        while context.is_active() and not self.stopping.is_set():
            if not self.ring.wait_beyond(seq, WAIT):
                continue
            missed, view = self.ring.read(seq, READ_CHUNK)
            if missed:
                self._count_lost(missed)
                yield convert.lost_event(missed, self.node_name, time.time_ns())
            seq = view.first_seq + len(view)
            chosen = matching(view)
            yield from convert.flows(chosen, self.node_name, metadata)
            if until is not None and len(view) and int(view.records["time_end_ns"].max()) > until:
                return
