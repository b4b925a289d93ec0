"""Trace and span ids derived from the connection, so agents on two nodes agree without talking.

The rule (version 1; documented in ``docs/traces.md``):

* The **connection key** is the 5-tuple oriented to the initiator: initiator address (16 bytes, IPv4
  mapped into IPv6), responder address, initiator port, responder port (ICMP: type and code), IANA
  protocol number; plus the **time bucket** ``floor(first_packet_unix_ns / window_ns)`` of the
  connection's first packet as this node saw it.
* ``trace_id`` = two 64-bit hashes of the key with different seeds (16 bytes, big-endian halves).
* A span's id is a 64-bit hash of the key and its **role**: 1 the initiator's span (CLIENT), 2 the
  responder's (SERVER), 3 and 4 the same sides seen on a node's network interface, 5 + DNS id for a
  DNS query span. The responder's spans name the initiator's span as parent, so a client/server pair
  forms a parent/child edge (Tempo's service graph pairs them this way).
* The hash is a splitmix64 chain over the key's little-endian 64-bit words, in numpy ``uint64``
  arithmetic: defined bit for bit, the same on every node and every architecture numpy runs on.

Limits: both nodes must see the same 5-tuple (no NAT between the observation points: a ClusterIP
Service translated by kube-proxy on the client's node gives the client side the Service address and
the server side the pod address, so the two land in different traces), and the first packet's times
on the two nodes must fall in the same bucket: with a one-way delay plus clock skew of ``d``, a pair
splits with probability ``d / window`` (1 ms against the 10 s default: 1 in 10,000). Two connections
with the same 5-tuple inside one bucket share a trace (and collide on span ids); Linux's TIME_WAIT keeps
a 5-tuple from being reused for 60 s on the side that closed first.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ROLE_CLIENT",
    "ROLE_DNS",
    "ROLE_NETWORK_CLIENT",
    "ROLE_NETWORK_SERVER",
    "ROLE_SERVER",
    "TRACE_KEY_DTYPE",
    "buckets",
    "hash64",
    "span_ids",
    "trace_ids",
]

ROLE_CLIENT = 1
ROLE_SERVER = 2
ROLE_NETWORK_CLIENT = 3
ROLE_NETWORK_SERVER = 4
ROLE_DNS = 5  # + the DNS id

TRACE_KEY_DTYPE = np.dtype(
    [
        ("a", "V16"),  # initiator address
        ("b", "V16"),  # responder address
        ("pa", "<u2"),  # initiator port (ICMP type)
        ("pb", "<u2"),  # responder port (ICMP code)
        ("proto", "<u4"),
        ("bucket", "<u8"),  # floor(first packet unix ns / window ns)
    ]
)
assert TRACE_KEY_DTYPE.itemsize == 48

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_SEED_TRACE_HI = 0x52455449_4E415F31  # "RETINA_1"
_SEED_TRACE_LO = 0x54524143_455F4C4F  # "TRACE_LO"
_SEED_SPAN = 0x5350414E_5F49445F  # "SPAN_ID_"


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser, in place on a uint64 array (wrapping arithmetic, no overflow warnings)."""
    z ^= z >> _U64(30)
    z *= _M1
    z ^= z >> _U64(27)
    z *= _M2
    z ^= z >> _U64(31)
    return z


def hash64(keys: npt.NDArray[np.void], seed: int) -> npt.NDArray[np.uint64]:
    """A 64-bit hash per row of a structured (or void) array whose item size is a multiple of 8."""
    n = int(keys.shape[0])
    width = keys.dtype.itemsize
    if width % 8:
        raise ValueError(f"key width {width} is not a multiple of 8 bytes")
    words = np.ascontiguousarray(keys).view(np.uint64).reshape(n, width // 8)
    h = np.full(n, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    for column in range(width // 8):
        h += _GOLDEN
        h ^= words[:, column]
        _mix(h)
    return h


def trace_ids(keys: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """16-byte trace ids (``V16``, as they go on the wire) for rows of :data:`TRACE_KEY_DTYPE`."""
    out = np.empty((int(keys.shape[0]), 2), dtype=">u8")
    out[:, 0] = hash64(keys, _SEED_TRACE_HI)
    out[:, 1] = hash64(keys, _SEED_TRACE_LO)
    out[(out[:, 0] == 0) & (out[:, 1] == 0), 1] = 1  # an all-zero trace id is invalid
    return out.view("V16").reshape(-1)


def span_ids(keys: npt.NDArray[np.void], roles: npt.NDArray[np.integer] | int) -> npt.NDArray[np.void]:
    """8-byte span ids (``V8``) for rows of :data:`TRACE_KEY_DTYPE` in the given role(s)."""
    h = hash64(keys, _SEED_SPAN)
    h ^= np.asarray(roles, dtype=np.uint64) * _GOLDEN
    _mix(h)
    h[h == 0] = 1  # an all-zero span id is invalid
    return h.astype(">u8").view("V8")


def buckets(first_ns: npt.NDArray[np.uint64], window_ns: int) -> npt.NDArray[np.uint64]:
    """The time bucket of each first-packet time."""
    return first_ns // np.uint64(window_ns)
