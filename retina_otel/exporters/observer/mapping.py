"""How flow-record columns map onto Hubble's enums, as vector operations (shared by the filters and
the conversion to ``flow.Flow``, so both always agree).

* event type (Cilium's monitor message types): drops are ``drop`` (1), DNS records ``l7`` (129),
  everything else a ``trace`` (4) whose sub-type is Cilium's trace point of the observation point.
* TCP flags: a record counts segments per flag; Hubble's ``TCPFlags`` says which were seen. SYN is
  set for SYN and SYN-ACK segments (the record keeps those apart), ACK for every segment with ACK.
"""

from __future__ import annotations

import functools
import socket

import numpy as np
import numpy.typing as npt

from retina_otel.flows import Event, FlowArray, ObservationPoint, TcpFlag

__all__ = [
    "EVENT_DROP",
    "EVENT_L7",
    "EVENT_TRACE",
    "HUBBLE_TCP_FLAGS",
    "IP_VERSION_OF_HUBBLE",
    "OBSERVATION_POINT",
    "event_types",
    "interface_name",
    "tcp_flags_seen",
]

EVENT_DROP, EVENT_TRACE, EVENT_L7 = 1, 4, 129

# ObservationPoint -> (flow.TraceObservationPoint, Cilium trace sub-type)
OBSERVATION_POINT = {
    ObservationPoint.FROM_ENDPOINT: (5, 5),  # FROM_ENDPOINT / TraceFromLxc
    ObservationPoint.TO_ENDPOINT: (101, 0),  # TO_ENDPOINT / TraceToLxc
    ObservationPoint.FROM_NETWORK: (10, 10),  # FROM_NETWORK / TraceFromNetwork
    ObservationPoint.TO_NETWORK: (11, 11),  # TO_NETWORK / TraceToNetwork
}
_POINT_TABLE = np.zeros(256, dtype=np.int32)
_SUBTYPE_TABLE = np.zeros(256, dtype=np.int32)
for _point, (_hubble, _sub) in OBSERVATION_POINT.items():
    _POINT_TABLE[int(_point)] = _hubble
    _SUBTYPE_TABLE[int(_point)] = _sub

IP_VERSION_OF_HUBBLE = {1: 4, 2: 6}  # flow.IPVersion -> ip_version column

HUBBLE_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def trace_points(records: FlowArray) -> npt.NDArray[np.int32]:
    points: npt.NDArray[np.int32] = _POINT_TABLE[records["observation_point"]]
    return points


def event_types(records: FlowArray) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """(Cilium message type, sub-type) per row."""
    event = records["event"]
    types = np.full(len(records), EVENT_TRACE, dtype=np.int32)
    types[event == Event.DROP] = EVENT_DROP
    types[event == Event.DNS] = EVENT_L7
    subtypes = np.where(types == EVENT_TRACE, _SUBTYPE_TABLE[records["observation_point"]], 0).astype(np.int32)
    return types, subtypes


def tcp_flags_seen(records: FlowArray) -> dict[str, npt.NDArray[np.bool_]]:
    """Hubble flag name -> whether the row counted any segment with it."""
    counts = records["tcp_flags"]
    seen = {flag.name: counts[:, int(flag)] > 0 for flag in TcpFlag}
    out = {name: seen[name] for name in HUBBLE_TCP_FLAGS if name in seen}
    out["SYN"] = seen["SYN"] | seen["SYNACK"]
    out["ACK"] = seen["ACK"] | seen["SYNACK"]
    return out


@functools.lru_cache(maxsize=4096)
def interface_name(ifindex: int) -> str:
    """The name of a host interface (cached: an index is reused only when links come and go)."""
    if not ifindex:
        return ""
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return ""
