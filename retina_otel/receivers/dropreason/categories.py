"""Which ``kfree_skb`` reasons are drops on the network path, and which are the stack cleaning up.

The ``kfree_skb`` tracepoint fires for every packet the kernel frees with a reason other than "consumed".
Most reasons mean a packet was lost on its way: a netfilter verdict, no route, no neighbour, a full
queue or buffer, a bad checksum or header, no socket listening. Some are the stack disposing of packets
that reached their end already or that it holds for itself: a closing socket purging its queues, the
RST that ends a connection, data arriving for a socket the application has closed, a duplicate of data
already received. Counting those as network drops makes every connection teardown look like loss, so
by default they are counted apart (``networkobservability_stack_discard_count/_bytes``) and get no
dropped-flow record; ``stack_discards: as_drops`` counts them as drops like the rest.

The list is explicit and small (:data:`STACK_REASONS`, the kernel's meaning from
``include/net/dropreason-core.h`` and why each is not a network drop); every other reason, including
ones a newer kernel adds, is a network drop: an unknown reason is never hidden.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["STACK_REASONS"]

STACK_REASONS: Mapping[str, str] = {
    "NOT_SPECIFIED": "kfree_skb() without a reason: call sites not annotated since 5.17, in practice socket "
    "and queue teardown (real losses on the network path carry their own reason on 6.x)",
    "SOCKET_CLOSE": "the socket was closed with packets still queued on it",
    "QUEUE_PURGE": "a whole queue was freed (socket destroyed, device down, connection retransmit queue)",
    "TCP_ABORT_ON_DATA": "data arrived for a TCP socket the application had closed: the stack answers RST "
    "and discards it (the peer's data could never be read)",
    "TCP_RESET": "the RST segment itself, after it reset the connection",
    "TCP_CLOSE": "a segment for a TCP socket already in CLOSE state (late segments of an ended connection)",
    "TCP_OLD_DATA": "a segment whose data was received already (a spurious retransmission): nothing lost",
    "TCP_OFOMERGE": "a segment merged into data already in the out-of-order queue: nothing lost",
    "UNIX_DISCONNECT": "a Unix-domain socket disconnected: local IPC, not the network",
    "UNIX_SKIP_OOB": "a Unix-domain out-of-band byte skipped: local IPC, not the network",
    "SKB_UCOPY_FAULT": "copying the application's data from user space failed: the send never became a packet",
    "PACKET_SOCK_ERROR": "a copy for a packet socket (tcpdump) could not be queued: the original packet "
    "went on; the tap lost its copy",
}
"""Kernel reason name -> why it is the stack's housekeeping rather than a packet lost on the network."""
