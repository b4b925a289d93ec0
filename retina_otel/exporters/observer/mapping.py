"""How flow-record columns map onto Hubble's enums, as vector operations (shared by the filters and
the conversion to ``flow.Flow``, so both always agree).

* event type (Cilium's monitor message types): drops are ``drop`` (1) whose sub-type is the drop
  reason's Hubble code (as Cilium's drop events), DNS records ``l7`` (129), everything else a
  ``trace`` (4) whose sub-type is Cilium's trace point of the observation point.
* drop reason: ``drop_reason_desc`` holds Cilium's datapath codes; the kernel's reasons that have one
  get it the way Retina maps its own reasons (a netfilter rule drop is ``POLICY_DENIED``), any other
  ``DROP_REASON_UNKNOWN`` (the kernel's name travels in FlowMetadata).
* TCP flags: a record counts segments per flag; Hubble's ``TCPFlags`` says which were seen. SYN is
  set for SYN and SYN-ACK segments (the record keeps those apart), ACK for every segment with ACK.
"""

from __future__ import annotations

import functools
import socket

import numpy as np
import numpy.typing as npt

from retina_otel.flows import STRINGS, Event, FlowArray, ObservationPoint, TcpFlag

__all__ = [
    "DROP_REASON_DESC",
    "EVENT_DROP",
    "EVENT_L7",
    "EVENT_TRACE",
    "HUBBLE_TCP_FLAGS",
    "IP_VERSION_OF_HUBBLE",
    "OBSERVATION_POINT",
    "drop_reason_descs",
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

IP_VERSION_OF_HUBBLE = {0: 0, 1: 4, 2: 6}  # flow.IPVersion -> ip_version column (IP_NOT_USED: a non-IP drop)

HUBBLE_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def trace_points(records: FlowArray) -> npt.NDArray[np.int32]:
    points: npt.NDArray[np.int32] = _POINT_TABLE[records["observation_point"]]
    return points


# The record's drop reason (kernel name, or Retina's with dropreason's ``reason_names: retina``) ->
# flow.DropReason, after Retina's GetDropReasonDesc (pkg/utils); absent names are DROP_REASON_UNKNOWN (0).
DROP_REASON_DESC = {
    "NETFILTER_DROP": 133,  # POLICY_DENIED (Retina: IPTABLE_RULE_DROP)
    "IPTABLE_RULE_DROP": 133,
    "IPTABLE_NAT_DROP": 191,  # SNAT_NO_MAP_FOUND
    "CONNTRACK_ADD_DROP": 163,  # UNKNOWN_CONNECTION_TRACKING_STATE
}
_DESC_BY_ID = {STRINGS.intern(name): code for name, code in DROP_REASON_DESC.items()}


def drop_reason_desc(reason_id: int) -> int:
    """flow.DropReason of one interned drop reason."""
    return _DESC_BY_ID.get(reason_id, 0)


def drop_reason_descs(records: FlowArray, hidden: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.int32]:
    """flow.DropReason per row (0 where the reason is ``hidden`` by a field mask)."""
    reasons = records["drop_reason"]
    out = np.zeros(len(records), dtype=np.int32)
    for reason_id, code in _DESC_BY_ID.items():
        out[reasons == reason_id] = code
    if hidden is not None:
        out[hidden] = 0
    return out


def event_types(
    records: FlowArray, descs: npt.NDArray[np.int32] | None = None
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """(Cilium message type, sub-type) per row; ``descs``: the rows' :func:`drop_reason_descs` (computed
    here when not given)."""
    event = records["event"]
    types = np.full(len(records), EVENT_TRACE, dtype=np.int32)
    drops = event == Event.DROP
    types[drops] = EVENT_DROP
    types[event == Event.DNS] = EVENT_L7
    subtypes = np.where(types == EVENT_TRACE, _SUBTYPE_TABLE[records["observation_point"]], 0).astype(np.int32)
    if drops.any():
        subtypes[drops] = (drop_reason_descs(records) if descs is None else descs)[drops]
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
