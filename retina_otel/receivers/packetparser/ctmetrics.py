"""packetparser's conntrack metrics: Retina's gauges from the live connection table, and the
cumulative packet and byte counters summed from the flow records.

Retina's conntrack plugin walks its connection table every report interval and sets, over the entries it
finds, the sum of each connection's packets and bytes since the connection began in the initiator's
direction (``conntrack_packets_tx``, ``conntrack_bytes_tx``) and the reply direction (``_rx``), and the
number of connections (``conntrack_total_connections``). Here the same walk happens at every flush of the
connection table (every ``report_interval``, and on :meth:`flush`): the kernel keeps per-connection
lifetime totals next to the since-last-report counters (``CT_TOTALS``). The table has one entry per
connection per interface, so a connection seen at two interfaces (two pods on this node) adds its packets
once per interface, as Retina's conntrack counts a packet at each hook it passes; it is counted as one
connection.

The cumulative sums over the flow records (packets leaving pods and the node = FROM_ENDPOINT and
TO_NETWORK observations, ``_tx``; entering = ``_rx``) are kept as ``networkobservability_packetparser_*``
counters.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from retina_otel.flows import ObservationPoint
from retina_otel.metrics.store import Family, MetricStore

__all__ = ["ConntrackMetrics"]

_TX_POINTS = np.array([ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_NETWORK], dtype=np.intp)
_N_POINTS = max(ObservationPoint) + 1
_MIX = np.uint64(0x9E3779B97F4A7C15)


def connection_ids(keys: npt.NDArray[np.void]) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each table key without its interface: one id per connection."""
    n = int(keys.shape[0])
    h = np.zeros(n, dtype=np.uint64)
    words = [np.ascontiguousarray(keys[side]).view("<u8").reshape(n, 2) for side in ("a", "b")]
    ports = (
        keys["pa"].astype(np.uint64) << np.uint64(16)
        | keys["pb"].astype(np.uint64)
        | keys["proto"].astype(np.uint64) << np.uint64(32)
    )
    for column in (words[0][:, 0], words[0][:, 1], words[1][:, 0], words[1][:, 1], ports):
        h = (h ^ column) * _MIX
        h ^= h >> np.uint64(29)
    return h


class ConntrackMetrics:
    """Declares the families in ``store``; ``count_records`` per batch of flow records; ``begin``,
    ``add_entries`` per chunk of the table and ``publish`` for each walk of the connection table."""

    def __init__(self, store: MetricStore) -> None:
        self._gauges: dict[str, Family] = {}
        self._counters: dict[str, Family] = {}
        for name, full, desc in (
            ("packets_tx", "networkobservability_conntrack_packets_tx",
             "Packets in the initiator's direction since their connection began, summed over the connection table"),
            ("packets_rx", "networkobservability_conntrack_packets_rx",
             "Packets in the reply direction since their connection began, summed over the connection table"),
            ("bytes_tx", "networkobservability_conntrack_bytes_tx",
             "IP bytes in the initiator's direction, as conntrack_packets_tx"),
            ("bytes_rx", "networkobservability_conntrack_bytes_rx",
             "IP bytes in the reply direction, as conntrack_packets_rx"),
            ("total_connections", "networkobservability_conntrack_total_connections",
             "Connections in the connection table"),
        ):
            self._gauges[name] = store.gauge(full, desc)
        for name, full, desc in (
            ("packets_tx", "networkobservability_packetparser_packets_tx",
             "Packets leaving pods (veth ingress) and the node (host egress), from the flow records"),
            ("packets_rx", "networkobservability_packetparser_packets_rx",
             "Packets entering pods (veth egress) and the node (host ingress), from the flow records"),
            ("bytes_tx", "networkobservability_packetparser_bytes_tx",
             "IP bytes leaving pods and the node, from the flow records"),
            ("bytes_rx", "networkobservability_packetparser_bytes_rx",
             "IP bytes entering pods and the node, from the flow records"),
        ):
            self._counters[name] = store.counter(full, desc)
        self._totals = np.zeros(4, dtype=np.float64)
        self._ids: list[npt.NDArray[np.uint64]] = []

    def count_records(self, records: npt.NDArray[np.void]) -> None:
        """Add a batch's packets and bytes to the counters: sums per observation point (one bincount per
        column), then the tx points' sums and the rest's."""
        obs = records["observation_point"].astype(np.intp)  # once: bincount would convert it per call
        for column, tx_name, rx_name in (("packets", "packets_tx", "packets_rx"), ("bytes", "bytes_tx", "bytes_rx")):
            per_point = np.bincount(obs, weights=records[column], minlength=_N_POINTS)
            tx = float(per_point[_TX_POINTS].sum())
            self._counters[tx_name].add((), tx)
            self._counters[rx_name].add((), float(per_point.sum()) - tx)

    def begin(self) -> None:
        self._totals[:] = 0
        self._ids = []

    def add_entries(self, keys: npt.NDArray[np.void], values: npt.NDArray[np.void]) -> None:
        """Live entries of one chunk of the table (``values["d"][:, 0]`` is the initiator's direction)."""
        if keys.shape[0] == 0:
            return
        d = values["d"]
        self._totals += (
            float(d["total_packets"][:, 0].sum()),
            float(d["total_packets"][:, 1].sum()),
            float(d["total_bytes"][:, 0].sum()),
            float(d["total_bytes"][:, 1].sum()),
        )
        self._ids.append(np.unique(connection_ids(keys)))

    def publish(self) -> None:
        connections = np.unique(np.concatenate(self._ids)).shape[0] if self._ids else 0
        names = ("packets_tx", "packets_rx", "bytes_tx", "bytes_rx")
        for name, value in zip(names, self._totals.tolist(), strict=True):
            self._gauges[name].set((), value)
        self._gauges["total_connections"].set((), float(connections))
        self._ids = []
