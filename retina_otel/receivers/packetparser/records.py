"""The kernel's record layouts as numpy dtypes, and the vectorised conversion into flow batches.

The dtypes mirror the C structs in ``pp_common.h`` (the part of packetparser.bpf.c every program
shares) byte for byte (checked against bcc's ctypes sizes when the program loads; ``struct report`` by
static asserts in the C source). A report is the first ``REPORT_BYTES`` of a flow record (asserted here
against ``FLOW_DTYPE``), so turning reports into flow rows is a block copy and a few bulk writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.flows import (
    FLOW_DTYPE,
    Direction,
    Event,
    FlowArray,
    FlowBatch,
    ObservationPoint,
    TcpFlag,
    Verdict,
    opaque_rows,
)

__all__ = [
    "CT_ENTRY_DTYPE",
    "CT_KEY_DTYPE",
    "HOT_SLOT_DTYPE",
    "LOST_STATS",
    "REPORT_BYTES",
    "REPORT_DTYPE",
    "RINGBUF_RECORD_DTYPE",
    "STAT_NAMES",
    "complete_rows",
    "report_bytes",
    "report_cflags",
    "reports_to_batch",
]

N_FLAGS = 10

REPORT_DTYPE = np.dtype(
    [
        ("t_first", "<u8"),
        ("t_last", "<u8"),
        ("src", "V16"),
        ("dst", "V16"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("proto", "u1"),
        ("ipver", "u1"),
        ("direction", "u1"),
        ("obs", "u1"),
        ("verdict", "u1"),
        ("event", "u1"),
        ("is_reply", "u1"),
        ("sampled", "u1"),
        ("ifindex", "<u4"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("rev_packets", "<u8"),
        ("rev_bytes", "<u8"),
        ("flags", "<u4", (N_FLAGS,)),
    ]
)
"""``struct report``: the first ``REPORT_BYTES`` bytes of a flow record, byte for byte (asserted below)."""
REPORT_BYTES = 136
assert REPORT_DTYPE.itemsize == REPORT_BYTES

# Each report field is the flow-record column named here, at the same offset with the same type, and
# together they are exactly FLOW_DTYPE's first REPORT_BYTES bytes: a change to either dtype fails here.
FLOW_COLUMN_OF_REPORT = {
    "t_first": "time_start_ns",
    "t_last": "time_end_ns",
    "src": "src_ip",
    "dst": "dst_ip",
    "sport": "src_port",
    "dport": "dst_port",
    "proto": "proto",
    "ipver": "ip_version",
    "direction": "direction",
    "obs": "observation_point",
    "verdict": "verdict",
    "event": "event",
    "is_reply": "is_reply",
    "sampled": "sampled",
    "ifindex": "ifindex",
    "packets": "packets",
    "bytes": "bytes",
    "rev_packets": "reply_packets",
    "rev_bytes": "reply_bytes",
    "flags": "tcp_flags",
}
assert REPORT_DTYPE.names == tuple(FLOW_COLUMN_OF_REPORT)
assert FLOW_DTYPE.names is not None and REPORT_DTYPE.fields is not None and FLOW_DTYPE.fields is not None
assert FLOW_DTYPE.names[: len(FLOW_COLUMN_OF_REPORT)] == tuple(FLOW_COLUMN_OF_REPORT.values())
assert all(REPORT_DTYPE.fields[r] == FLOW_DTYPE.fields[f] for r, f in FLOW_COLUMN_OF_REPORT.items())
assert FLOW_DTYPE.fields[FLOW_DTYPE.names[len(FLOW_COLUMN_OF_REPORT)]][1] == REPORT_BYTES

# A ring-buffer record: the kernel's 8-byte header (length with BUSY/DISCARD bits, page offset) and the
# report, 8-byte aligned. Every record of this program has this size.
RINGBUF_RECORD_DTYPE = np.dtype([("hdr_len", "<u4"), ("hdr_pg_off", "<u4"), ("report", REPORT_DTYPE)])
assert RINGBUF_RECORD_DTYPE.itemsize == 144

CT_KEY_DTYPE = np.dtype(
    [("a", "V16"), ("b", "V16"), ("pa", "<u2"), ("pb", "<u2"), ("ifindex", "<u4"), ("proto", "u1"), ("pad", "V3")]
)
assert CT_KEY_DTYPE.itemsize == 44

HOT_SLOT_DTYPE = np.dtype(
    [
        ("flow", CT_KEY_DTYPE),  # as the packets carry it (a = source), not the normalised key
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("flags_ok", "<u2"),
        ("obs", "u1"),
        ("src_is_a", "u1"),
        ("ipver", "u1"),
        ("valid", "u1"),
        ("pad", "V2"),
        ("deadline", "<u8"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("n_ack", "<u8"),
        ("n_psh", "<u8"),
    ]
)
"""A slot of the per-CPU flow cache of high aggregation (``struct hot_slot``)."""
assert HOT_SLOT_DTYPE.itemsize == 112

CT_DIR_DTYPE = np.dtype(
    [
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("rev_packets", "<u8"),
        ("rev_bytes", "<u8"),
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("last_report_ns", "<u8"),
        ("flags", "<u4", (N_FLAGS,)),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("flags_seen", "<u2"),
        ("obs", "u1"),
        ("pad", "u1"),
        ("total_packets", "<u8"),  # since the connection began (CT_TOTALS), for the conntrack_* gauges
        ("total_bytes", "<u8"),
    ]
)
CT_ENTRY_DTYPE = np.dtype(
    [
        ("d", CT_DIR_DTYPE, (2,)),
        ("eviction_ns", "<u8"),
        ("init_is_a", "u1"),
        ("closing", "u1"),
        ("ipver", "u1"),
        ("pad", "V5"),
    ]
)
assert CT_ENTRY_DTYPE.itemsize == 256

# Index -> name of the kernel's per-CPU statistics (ST_* in the C source).
STAT_NAMES = (
    "packets",
    "reports",
    "ringbuf_full",
    "conntrack_created",
    "conntrack_full",
    "not_ip",
    "truncated_l2",
    "truncated_ip",
    "malformed_ip",
    "truncated_ipv6_extension",
    "ipv6_extension_limit",
    "truncated_l4",
    "malformed_l4",
    "filtered",
    "sampled_out",
    "flush_deleted",
    "flow_cache_hits",
    "tail_call_failed",
)

# Statistics forwarded to ``host.count_lost("packetparser", reason, n)``: reports that could not be
# written (their counts ride on a later report), packets not counted (table full), and packets the
# parser refused (truncated or malformed headers: counted, never mis-parsed).
LOST_STATS = (
    "ringbuf_full",
    "conntrack_full",
    "tail_call_failed",
    "truncated_l2",
    "truncated_ip",
    "malformed_ip",
    "truncated_ipv6_extension",
    "ipv6_extension_limit",
    "truncated_l4",
    "malformed_l4",
)

# ObservationPoint -> Direction seen from the observed endpoint (pod or node).
_DIRECTION_OF_OBS = np.array(
    [
        Direction.UNKNOWN,
        Direction.EGRESS,  # FROM_ENDPOINT: leaving the pod
        Direction.INGRESS,  # TO_ENDPOINT: entering the pod
        Direction.INGRESS,  # FROM_NETWORK: entering the node
        Direction.EGRESS,  # TO_NETWORK: leaving the node
        Direction.UNKNOWN,
    ],
    dtype=np.uint8,
)

# The kernel's flag counters: column i counts packets with flag F_<name> = 1 << i (pp_common.h),
# the same order as TcpFlag's columns, so a report's bytes are the flow record's as they are.
KERNEL_FLAG_COLUMNS = ("FIN", "SYN", "SYNACK", "ACK", "RST", "PSH", "URG", "ECE", "CWR", "NS")
assert [TcpFlag[name].value for name in KERNEL_FLAG_COLUMNS] == list(range(N_FLAGS))
# ObservationPoint values index _DIRECTION_OF_OBS.
assert [f.value for f in ObservationPoint][:5] == [0, 1, 2, 3, 4]


def report_cflags() -> list[str]:
    """The values the kernel writes into a report's ``direction``, ``verdict`` and ``event`` (-D flags for
    pp_common.h, which refuses to compile without them): the enums' own values, so they cannot drift."""
    flags = [f"-DDIR_OF_OBS_{obs}={int(_DIRECTION_OF_OBS[obs])}" for obs in range(1, 5)]
    return [
        *flags,
        f"-DDIR_UNKNOWN={int(Direction.UNKNOWN)}",
        f"-DVERDICT_FORWARDED={int(Verdict.FORWARDED)}",
        f"-DEVENT_FLOW={int(Event.FLOW)}",
    ]


# The bytes of a flow record after the report: those of an empty row (FlowBatch.empty: zeros, endpoints -1).
_TAIL_BYTES = FLOW_DTYPE.itemsize - REPORT_BYTES
_TAIL = FlowBatch.empty(1).records.view(np.uint8)[REPORT_BYTES:].view(np.dtype((np.void, _TAIL_BYTES)))[0]
_REPORT_VOID = np.dtype((np.void, REPORT_BYTES))


def _bytes_view(rows: FlowArray, offset: int, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """One ``dtype`` per row at byte ``offset`` of each of ``rows`` (a 1-D array), sharing their memory."""
    return np.ndarray(rows.shape, dtype=dtype, buffer=rows, offset=offset, strides=rows.strides)


def report_bytes(rows: FlowArray) -> npt.NDArray[np.void]:
    """The first ``REPORT_BYTES`` of each flow row (contiguous ``FLOW_DTYPE`` rows), as opaque values to
    copy reports into (:meth:`~.kernel.RingBufReader.read_into`, :func:`reports_to_batch`)."""
    return _bytes_view(rows, 0, _REPORT_VOID)


def complete_rows(rows: FlowArray, clock_offset_ns: int) -> int:
    """Turn contiguous ``FLOW_DTYPE`` rows whose first ``REPORT_BYTES`` hold kernel reports into flow
    records, in place: the columns after the report as in an empty row, the table clock's times moved to
    the wall clock. Returns how many rows are kept, at the front of ``rows``.

    Rows without packets in their own direction are dropped (they can only come from a race between
    the flush program and a packet-triggered report of the same direction).
    """
    n = int(rows.shape[0])
    if n == 0:
        return 0
    _bytes_view(rows, REPORT_BYTES, _TAIL.dtype)[...] = _TAIL
    offset = np.uint64(clock_offset_ns)
    for column in ("time_start_ns", "time_end_ns"):  # column by column: ~2x faster than a (n, 2) view
        times = _bytes_view(rows, FLOW_DTYPE.fields[column][1], "<u8")  # type: ignore[index]
        np.add(times, offset, out=times)
    packets = rows["packets"]
    if packets.all():
        return n
    whole = opaque_rows(rows)
    kept = whole[packets > 0]  # boolean indexing copies
    whole[: kept.shape[0]] = kept
    return int(kept.shape[0])


def reports_to_batch(reports: npt.NDArray[np.void], clock_offset_ns: int, receiver: str) -> FlowBatch:
    """Kernel reports (``REPORT_DTYPE``, any strides) -> a :class:`FlowBatch`: one copy of each report's
    bytes into a flow row, then :func:`complete_rows` (which drops rows without packets)."""
    rows = np.empty(int(reports.shape[0]), dtype=FLOW_DTYPE)
    report_bytes(rows)[...] = reports.view(_REPORT_VOID)
    return FlowBatch(records=rows[: complete_rows(rows, clock_offset_ns)], receiver=receiver)
