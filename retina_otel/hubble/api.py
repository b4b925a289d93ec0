"""The ``observer.Observer`` gRPC service without generated service code: its method paths and
(de)serializers, for the server (:func:`generic_handler`) and for clients (:class:`ObserverStub`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from retina_otel.hubble import observer_pb2

__all__ = ["SERVICE", "ObserverStub", "generic_handler"]

SERVICE = "observer.Observer"


def generic_handler(
    get_flows: Callable[[observer_pb2.GetFlowsRequest, grpc.ServicerContext], Iterator[observer_pb2.GetFlowsResponse]],
    get_nodes: Callable[[observer_pb2.GetNodesRequest, grpc.ServicerContext], observer_pb2.GetNodesResponse],
    server_status: Callable[
        [observer_pb2.ServerStatusRequest, grpc.ServicerContext], observer_pb2.ServerStatusResponse
    ],
) -> grpc.GenericRpcHandler:
    """Hubble's service; methods it does not list (GetAgentEvents, GetDebugEvents) answer UNIMPLEMENTED."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                get_flows,
                request_deserializer=observer_pb2.GetFlowsRequest.FromString,
                response_serializer=observer_pb2.GetFlowsResponse.SerializeToString,
            ),
            "GetNodes": grpc.unary_unary_rpc_method_handler(
                get_nodes,
                request_deserializer=observer_pb2.GetNodesRequest.FromString,
                response_serializer=observer_pb2.GetNodesResponse.SerializeToString,
            ),
            "ServerStatus": grpc.unary_unary_rpc_method_handler(
                server_status,
                request_deserializer=observer_pb2.ServerStatusRequest.FromString,
                response_serializer=observer_pb2.ServerStatusResponse.SerializeToString,
            ),
        },
    )


class ObserverStub:
    """Client side of the three methods on an open channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.GetFlows: Any = channel.unary_stream(
            f"/{SERVICE}/GetFlows",
            request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
            response_deserializer=observer_pb2.GetFlowsResponse.FromString,
        )
        self.GetNodes: Any = channel.unary_unary(
            f"/{SERVICE}/GetNodes",
            request_serializer=observer_pb2.GetNodesRequest.SerializeToString,
            response_deserializer=observer_pb2.GetNodesResponse.FromString,
        )
        self.ServerStatus: Any = channel.unary_unary(
            f"/{SERVICE}/ServerStatus",
            request_serializer=observer_pb2.ServerStatusRequest.SerializeToString,
            response_deserializer=observer_pb2.ServerStatusResponse.FromString,
        )
