"""Flow records: the log signal, carried through the pipeline as columnar batches.

Per-record Python objects cannot keep up with a node's flow rate, so a batch of flow records is one
numpy structured array (:data:`FLOW_DTYPE`, one row per flow per report) plus a few side columns for
the values that are not fixed-size numbers (DNS names and answers). Receivers fill rows from drained
kernel maps (``np.frombuffer`` over the ctypes arrays bcc returns), processors add columns in bulk
(k8sattributes fills the endpoint indices), and only exporters that need text (OTLP logs, debug) turn
rows into attributes, with the names in :mod:`retina_otel.flowschema`.

Addresses are 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``), with
``ip_version`` telling which. Low-cardinality strings (drop reasons) are interned once per process in
:data:`STRINGS` and stored as ids.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FLOW_DTYPE",
    "STRINGS",
    "Direction",
    "EndpointTable",
    "Event",
    "FieldMask",
    "FlowBatch",
    "ObservationPoint",
    "StringTable",
    "TcpFlag",
    "Verdict",
    "bytes_to_ip",
    "copy_rows",
    "ip_to_bytes",
    "opaque_rows",
]


class Direction(IntEnum):
    """Direction of the packets a row counts, seen from the observed endpoint (Retina's semantics)."""

    UNKNOWN = 0
    INGRESS = 1
    EGRESS = 2


class ObservationPoint(IntEnum):
    """Where in the datapath the packets were seen (Retina/Hubble observation points)."""

    UNKNOWN = 0
    FROM_ENDPOINT = 1  # host-side veth, ingress hook: leaving a pod
    TO_ENDPOINT = 2  # host-side veth, egress hook: entering a pod
    FROM_NETWORK = 3  # host interface, ingress hook
    TO_NETWORK = 4  # host interface, egress hook
    STACK = 5  # a tracepoint in the kernel stack (drops, retransmissions)


class Verdict(IntEnum):
    UNKNOWN = 0
    FORWARDED = 1
    DROPPED = 2


class Event(IntEnum):
    """What produced the row: the receiver's kind of observation."""

    FLOW = 1  # packetparser
    DROP = 2  # dropreason
    RETRANSMIT = 3  # tcpretrans
    DNS = 4  # dns


class TcpFlag(IntEnum):
    """Column order of the per-flag counters; names are Retina's ``adv_tcpflags_count`` flag values."""

    FIN = 0
    SYN = 1
    SYNACK = 2
    ACK = 3
    RST = 4
    PSH = 5
    URG = 6
    ECE = 7
    CWR = 8
    NS = 9


FLOW_DTYPE = np.dtype(
    [
        ("time_start_ns", "<u8"),  # wall clock (unix epoch ns) of the first packet counted in the row
        ("time_end_ns", "<u8"),  # wall clock of the last packet counted in the row
        ("src_ip", "V16"),
        ("dst_ip", "V16"),
        ("src_port", "<u2"),  # also ICMP type for ICMP rows
        ("dst_port", "<u2"),  # also ICMP code for ICMP rows
        ("proto", "u1"),  # IANA protocol number: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6
        ("ip_version", "u1"),  # 4 or 6
        ("direction", "u1"),  # Direction
        ("observation_point", "u1"),  # ObservationPoint
        ("verdict", "u1"),  # Verdict
        ("event", "u1"),  # Event
        ("is_reply", "u1"),  # 1 when the row's packets go responder -> initiator
        ("sampled", "u1"),  # 1 when counts come from sampled packets (data_sampling_rate > 1)
        ("ifindex", "<u4"),
        ("packets", "<u8"),  # since last report, src -> dst
        ("bytes", "<u8"),  # since last report, src -> dst (IP length)
        # dst -> src since the last report, where the hook sees both ways: for the flow record only.
        # Those packets are also counted in rows of their own direction; never add these to totals.
        ("reply_packets", "<u8"),
        ("reply_bytes", "<u8"),
        ("tcp_flags", "<u4", (len(TcpFlag),)),  # counts per TcpFlag since last report
        ("drop_reason", "<u4"),  # id in STRINGS of the kernel's skb_drop_reason name, 0 = none
        ("retransmits", "<u4"),  # TCP retransmitted segments since last report
        ("srtt_us", "<u4"),  # smoothed RTT (tcp:tcp_probe), 0 = unknown
        ("handshake_us", "<u4"),  # SYN -> SYN/ACK time, 0 = unknown
        ("dns_id", "<u2"),
        ("dns_qtype", "<u2"),
        ("dns_rcode", "u1"),
        ("dns_is_response", "u1"),
        ("dns_answer_count", "<u2"),
        ("dns_latency_us", "<u4"),  # query -> response, on response rows, 0 = unknown
        ("src_endpoint", "<i4"),  # index into FlowBatch.endpoints, -1 = unknown (set by k8sattributes)
        ("dst_endpoint", "<i4"),
    ],
    align=False,
)

FlowArray = npt.NDArray[np.void]


class StringTable:
    """Process-wide append-only interning of low-cardinality strings; id 0 is the empty string."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {"": 0}
        self._names: list[str] = [""]

    def intern(self, name: str) -> int:
        found = self._ids.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._ids.get(name)
            if found is None:
                found = len(self._names)
                self._names.append(name)
                self._ids[name] = found
            return found

    def name(self, ident: int) -> str:
        return self._names[ident] if 0 <= ident < len(self._names) else ""

    def names(self) -> Sequence[str]:
        """A snapshot usable for vectorised look-ups (``np.asarray(names)[ids]``)."""
        return tuple(self._names)


STRINGS = StringTable()


@dataclass(frozen=True, slots=True)
class EndpointTable:
    """Metadata rows that ``src_endpoint``/``dst_endpoint`` index into.

    Each entry is a mapping of flow-record attribute suffixes (``k8s.pod.name``, ``k8s.namespace.name``,
    ...; see :mod:`retina_otel.flowschema`) to values, shared between batches: processors build it once
    per cache generation, not per row.
    """

    entries: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True, slots=True)
class FieldMask:
    """Which attributes of a flow record an exporter writes (the ``transform`` processor's field mask).

    ``keep`` (when set) lists the attributes to keep, ``drop`` the ones to remove; an entry ending in ``*``
    is a prefix (``source.k8s.*``). ``event.name`` always stays (it names the record)."""

    keep: frozenset[str] | None = None
    drop: frozenset[str] = frozenset()

    @staticmethod
    def _matches(name: str, patterns: frozenset[str]) -> bool:
        if name in patterns:
            return True
        return any(p.endswith("*") and name.startswith(p[:-1]) for p in patterns)

    def allows(self, name: str) -> bool:
        if name == "event.name":
            return True
        if self.keep is not None and not self._matches(name, self.keep):
            return False
        return not self._matches(name, self.drop)

    def apply(self, attributes: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in attributes.items() if self.allows(k)}


def opaque_rows(rows: npt.NDArray[Any]) -> npt.NDArray[np.void]:
    """``rows`` (a 1-D structured array) as opaque values of the row's size, sharing their memory."""
    return rows.view(np.dtype((np.void, rows.dtype.itemsize)))


def copy_rows(records: npt.NDArray[Any], rows: npt.NDArray[np.bool_] | npt.NDArray[np.intp] | None = None) -> Any:
    """A copy of ``records`` (of the ``rows`` selected by a mask or indices), made through opaque rows:
    numpy copies a structured dtype field by field (~80 ns a row for FLOW_DTYPE), opaque values in one
    block (~5 ns)."""
    opaque = opaque_rows(records)
    return (opaque.copy() if rows is None else opaque[rows]).view(records.dtype)


@dataclass(slots=True)
class FlowBatch:
    """A batch of flow records from one receiver.

    ``records`` has dtype :data:`FLOW_DTYPE`. ``dns`` holds, when set, one entry per row (``None`` for
    rows without DNS data) with ``query`` (str), ``answers`` (list of str) and ``query_type`` name.
    ``attributes`` are resource-level attributes (receiver name, node name, ...). ``masks`` are field
    masks exporters apply, in order, to each record's attributes.

    A batch handed to more than one consumer that does not change data is marked read-only
    (:meth:`mark_read_only`: numpy refuses writes to ``records``); a consumer that changes data gets a
    :meth:`copy` (see :class:`retina_otel.signals.FanOut`).
    """

    records: FlowArray
    receiver: str = ""
    dns: list[Mapping[str, Any] | None] | None = None
    endpoints: EndpointTable = field(default_factory=EndpointTable)
    attributes: dict[str, str] = field(default_factory=dict)
    masks: tuple[FieldMask, ...] = ()

    def __len__(self) -> int:
        return int(self.records.shape[0])

    def copy(self) -> FlowBatch:
        """A batch whose rows, DNS list and attributes can be changed without touching this one (the
        endpoint table and masks are immutable and shared)."""
        return FlowBatch(
            records=copy_rows(self.records),
            receiver=self.receiver,
            dns=None if self.dns is None else list(self.dns),
            endpoints=self.endpoints,
            attributes=dict(self.attributes),
            masks=self.masks,
        )

    def select(self, rows: npt.NDArray[np.bool_] | npt.NDArray[np.intp] | slice) -> FlowBatch:
        """A new batch of some rows (a boolean mask, indices or a slice; a slice shares memory with this
        batch, so it is read-only when this one is); metadata shared as in :meth:`copy`."""
        dns = self.dns
        if dns is not None:
            if isinstance(rows, slice):
                dns = dns[rows]
            else:
                index = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows
                dns = [dns[i] for i in index.tolist()]
        return FlowBatch(
            records=self.records[rows] if isinstance(rows, slice) else copy_rows(self.records, rows),
            receiver=self.receiver,
            dns=dns,
            endpoints=self.endpoints,
            attributes=dict(self.attributes),
            masks=self.masks,
        )

    @property
    def read_only(self) -> bool:
        return not self.records.flags.writeable

    def mark_read_only(self) -> None:
        self.records.flags.writeable = False

    @classmethod
    def empty(cls, n: int, receiver: str = "") -> FlowBatch:
        """``n`` zeroed rows with the endpoint indices at -1, ready for a receiver to fill."""
        records = np.zeros(n, dtype=FLOW_DTYPE)
        records["src_endpoint"] = -1
        records["dst_endpoint"] = -1
        return cls(records=records, receiver=receiver)


_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


def ip_to_bytes(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte form used in :data:`FLOW_DTYPE` (IPv4 mapped into IPv6)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 4:
        return _V4_PREFIX + ip.packed
    return ip.packed


def bytes_to_ip(raw: bytes | np.void) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Inverse of :func:`ip_to_bytes`."""
    data = raw.tobytes() if isinstance(raw, np.void) else bytes(raw)
    if data[:12] == _V4_PREFIX:
        return ipaddress.IPv4Address(data[12:])
    return ipaddress.IPv6Address(data)
