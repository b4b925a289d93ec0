"""The kernel's record layouts as numpy dtypes, and the vectorised conversion into flow batches.

The dtypes mirror the C structs in ``pp_common.h`` (the part of packetparser.bpf.c every program
shares) byte for byte (checked against bcc's ctypes sizes when the program loads).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from retina_otel.flows import FLOW_DTYPE, Direction, Event, FlowBatch, ObservationPoint, TcpFlag, Verdict

__all__ = [
    "CT_ENTRY_DTYPE",
    "CT_KEY_DTYPE",
    "HOT_SLOT_DTYPE",
    "LOST_STATS",
    "REPORT_DTYPE",
    "RINGBUF_RECORD_DTYPE",
    "STAT_NAMES",
    "reports_to_batch",
]

N_FLAGS = 10

REPORT_DTYPE = np.dtype(
    [
        ("t_first", "<u8"),
        ("t_last", "<u8"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("rev_packets", "<u8"),
        ("rev_bytes", "<u8"),
        ("src", "V16"),
        ("dst", "V16"),
        ("ifindex", "<u4"),
        ("flags", "<u4", (N_FLAGS,)),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("proto", "u1"),
        ("ipver", "u1"),
        ("obs", "u1"),
        ("is_reply", "u1"),
        ("sampled", "u1"),
        ("reason", "u1"),
        ("pad", "V2"),
    ]
)
assert REPORT_DTYPE.itemsize == 136

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
        ("flags", "<u8", (N_FLAGS,)),
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
assert CT_ENTRY_DTYPE.itemsize == 336

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
# the same order as TcpFlag's columns, so reports_to_batch copies them as they are.
KERNEL_FLAG_COLUMNS = ("FIN", "SYN", "SYNACK", "ACK", "RST", "PSH", "URG", "ECE", "CWR", "NS")
assert [TcpFlag[name].value for name in KERNEL_FLAG_COLUMNS] == list(range(N_FLAGS))
# ObservationPoint values index _DIRECTION_OF_OBS.
assert [f.value for f in ObservationPoint][:5] == [0, 1, 2, 3, 4]


def reports_to_batch(reports: npt.NDArray[np.void], clock_offset_ns: int, receiver: str) -> FlowBatch:
    """Kernel reports (``REPORT_DTYPE``) -> a :class:`FlowBatch`, vectorised.

    Rows without packets in their own direction are dropped (they can only come from a race between
    the flush program and a packet-triggered report of the same direction).
    """
    reports = reports[reports["packets"] > 0]
    batch = FlowBatch.empty(int(reports.shape[0]), receiver=receiver)
    out = batch.records
    if out.shape[0] == 0:
        return batch
    offset = np.uint64(clock_offset_ns)
    out["time_start_ns"] = reports["t_first"] + offset
    out["time_end_ns"] = reports["t_last"] + offset
    out["src_ip"] = reports["src"]
    out["dst_ip"] = reports["dst"]
    out["src_port"] = reports["sport"]
    out["dst_port"] = reports["dport"]
    out["proto"] = reports["proto"]
    out["ip_version"] = reports["ipver"]
    obs = np.minimum(reports["obs"], 5)
    out["observation_point"] = obs
    out["direction"] = _DIRECTION_OF_OBS[obs]
    out["verdict"] = Verdict.FORWARDED
    out["event"] = Event.FLOW
    out["is_reply"] = reports["is_reply"]
    out["sampled"] = reports["sampled"]
    out["ifindex"] = reports["ifindex"]
    out["packets"] = reports["packets"]
    out["bytes"] = reports["bytes"]
    out["reply_packets"] = reports["rev_packets"]
    out["reply_bytes"] = reports["rev_bytes"]
    out["tcp_flags"] = reports["flags"]
    return batch


assert FLOW_DTYPE["tcp_flags"].shape == (N_FLAGS,)
