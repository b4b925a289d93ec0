"""What to trace: TracesConfiguration ``traceConfiguration`` entries compiled into vectorised matchers.

A connection is traced when some target of some entry matches it:

* ``from`` matches the connection's initiator address, ``to`` its responder address; a missing peer
  matches any address. A peer is the union of its ``ipBlock`` (``cidr`` minus ``except``) and the
  addresses of the pods its selectors pick: ``podSelector`` (pod labels) and ``namespaceSelector``
  (namespace labels) together pick pods matching both; either alone picks on that alone. Pods come from
  the agent's Kubernetes cache (in local context, this node's pods). ``nodeSelector`` and
  ``serviceSelector`` are not evaluated by the agent (its cache keeps no node or service labels): the
  model rejects them (the operator errors the object; a standalone config fails at start), and should
  one reach this module anyway it is ignored with a warning.
* ``ports`` match the responder's port and the protocol (``port`` .. ``endPort``); empty: any. Port
  numbers only: the model rejects names (the agent has no container ports to resolve them with).
* ``tracePoints``: PodToNode and NodeToPod select the spans seen on pod interfaces, NodeToNetwork and
  NetworkToNode those seen on the node's interface; empty: pod interfaces only.

``captureLevel: AllPackets`` on any matching entry adds each packetparser report as a span event;
``includeLayer7Data`` on any matching entry turns the connection's DNS queries into spans.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from retina_otel.crds.models import LabelSelector, TraceConfiguration, TracePorts, TraceTarget
from retina_otel.flows import ObservationPoint, ip_to_bytes

__all__ = ["CLASS_ENDPOINT", "CLASS_NETWORK", "Match", "PodView", "TraceTargets", "compile_targets"]

log = logging.getLogger(__name__)

CLASS_ENDPOINT = 0  # pod interfaces (FROM_ENDPOINT / TO_ENDPOINT)
CLASS_NETWORK = 1  # the node's interface (FROM_NETWORK / TO_NETWORK)

_POINT_CLASS = {
    "PodToNode": CLASS_ENDPOINT,
    "NodeToPod": CLASS_ENDPOINT,
    "NodeToNetwork": CLASS_NETWORK,
    "NetworkToNode": CLASS_NETWORK,
}
_PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}


@dataclass(frozen=True, slots=True)
class PodView:
    """What target selection needs of a pod: labels, its namespace's labels, addresses (16-byte)."""

    labels: dict[str, str]
    namespace_labels: dict[str, str]
    ips: tuple[bytes, ...]


def _words(addresses: npt.NDArray[np.void]) -> npt.NDArray[np.uint64]:
    """16-byte addresses as (n, 2) big-endian 64-bit words (so prefixes compare as integers)."""
    return np.ascontiguousarray(addresses).view(">u8").reshape(-1, 2).astype(np.uint64)


def _net_words(cidr: str) -> tuple[int, int, int, int]:
    net = ipaddress.ip_network(cidr, strict=False)
    bits = net.prefixlen + (96 if net.version == 4 else 0)
    value = int.from_bytes(ip_to_bytes(net.network_address), "big")
    mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    return value >> 64, value & (2**64 - 1), mask >> 64, mask & (2**64 - 1)


@dataclass(slots=True)
class _Peer:
    nets: list[tuple[int, int, int, int]] = field(default_factory=list)
    excepts: list[tuple[int, int, int, int]] = field(default_factory=list)
    ips: set[bytes] = field(default_factory=set)
    any: bool = False

    def match(self, words: npt.NDArray[np.uint64], raw: npt.NDArray[np.void]) -> npt.NDArray[np.bool_]:
        n = words.shape[0]
        if self.any:
            return np.ones(n, dtype=bool)
        out = np.zeros(n, dtype=bool)
        for hi, lo, mhi, mlo in self.nets:
            out |= ((words[:, 0] & np.uint64(mhi)) == np.uint64(hi)) & ((words[:, 1] & np.uint64(mlo)) == np.uint64(lo))
        for hi, lo, mhi, mlo in self.excepts:
            out &= ~(
                ((words[:, 0] & np.uint64(mhi)) == np.uint64(hi)) & ((words[:, 1] & np.uint64(mlo)) == np.uint64(lo))
            )
        if self.ips:
            out |= np.isin(raw, np.array(sorted(self.ips), dtype="V16"))
        return out


@dataclass(slots=True)
class _Target:
    src: _Peer
    dst: _Peer
    ports: list[tuple[int, int, int]]  # (proto, first, last)
    classes: frozenset[int]
    all_packets: bool
    l7: bool


@dataclass(frozen=True, slots=True)
class Match:
    """Per-row results: traced, AllPackets, includeLayer7Data."""

    traced: npt.NDArray[np.bool_]
    all_packets: npt.NDArray[np.bool_]
    l7: npt.NDArray[np.bool_]


def _selected_pods(
    target: TraceTarget, pods: Iterable[PodView], warn: Callable[[str], None]
) -> tuple[set[bytes], bool]:
    """Addresses of the pods the target's selectors pick, and whether any selector applies."""
    pod_sel: LabelSelector | None = target.pod_selector
    ns_sel: LabelSelector | None = target.namespace_selector
    if target.node_selector is not None or target.service_selector is not None:
        warn("nodeSelector and serviceSelector are not evaluated by the agent; use podSelector/namespaceSelector")
    if pod_sel is None and ns_sel is None:
        return set(), False
    out: set[bytes] = set()
    for pod in pods:
        if pod_sel is not None and not pod_sel.matches(pod.labels):
            continue
        if ns_sel is not None and not ns_sel.matches(pod.namespace_labels):
            continue
        out.update(pod.ips)
    return out, True


def _peer(target: TraceTarget | None, pods: Sequence[PodView], warn: Callable[[str], None]) -> _Peer:
    if target is None:
        return _Peer(any=True)
    peer = _Peer()
    if target.ip_block is not None and target.ip_block.cidr:
        peer.nets.append(_net_words(target.ip_block.cidr))
        peer.excepts.extend(_net_words(c) for c in target.ip_block.except_)
    peer.ips, _ = _selected_pods(target, pods, warn)
    return peer


def _ports(entries: Iterable[TracePorts], warn: Callable[[str], None]) -> list[tuple[int, int, int]]:
    out = []
    for entry in entries:
        port, end, proto = entry.port, entry.end_port, entry.protocol
        try:
            first = int(port)
            last = int(end) if end else first
        except ValueError:
            warn(f"port {port!r}: named ports are not resolved by the agent; this port matches nothing")
            continue
        out.append((_PROTO[str(proto)], first, last))
    return out


class TraceTargets:
    """The compiled union of trace configurations (empty: nothing is traced)."""

    def __init__(self, targets: list[_Target]) -> None:
        self._targets = targets

    def __bool__(self) -> bool:
        return bool(self._targets)

    @property
    def any_l7(self) -> bool:
        return any(t.l7 for t in self._targets)

    def match(
        self,
        initiator: npt.NDArray[np.void],
        responder: npt.NDArray[np.void],
        responder_port: npt.NDArray[np.uint16],
        proto: npt.NDArray[np.uint8],
        point_class: npt.NDArray[np.uint8] | None,
    ) -> Match:
        n = int(initiator.shape[0])
        traced = np.zeros(n, dtype=bool)
        all_packets = np.zeros(n, dtype=bool)
        l7 = np.zeros(n, dtype=bool)
        if not n:
            return Match(traced, all_packets, l7)
        iw, rw = _words(initiator), _words(responder)
        for target in self._targets:
            hit = target.src.match(iw, initiator) & target.dst.match(rw, responder)
            if target.ports:
                on_port = np.zeros(n, dtype=bool)
                for p, first, last in target.ports:
                    on_port |= (proto == p) & (responder_port >= first) & (responder_port <= last)
                hit &= on_port
            if point_class is not None:
                hit &= np.isin(point_class, np.array(sorted(target.classes), dtype=np.uint8))
            traced |= hit
            if target.all_packets:
                all_packets |= hit
            if target.l7:
                l7 |= hit
        return Match(traced, all_packets, l7)


def compile_targets(
    configurations: Iterable[TraceConfiguration],
    pods: Sequence[PodView] = (),
    warn: Callable[[str], None] = log.warning,
) -> TraceTargets:
    """Compile ``traceConfiguration`` entries (of every applied object) against the current pods."""
    seen: set[str] = set()

    def warn_once(message: str) -> None:
        if message not in seen:
            seen.add(message)
            warn(message)

    out: list[_Target] = []
    for entry in configurations:
        for target in entry.trace_targets:
            classes = frozenset(_POINT_CLASS[p] for p in target.trace_points) or frozenset({CLASS_ENDPOINT})
            ports = _ports(target.ports, warn_once)
            if target.ports and not ports:
                continue  # only ports the agent cannot resolve: the target matches nothing (not every port)
            out.append(
                _Target(
                    src=_peer(target.from_, pods, warn_once),
                    dst=_peer(target.to, pods, warn_once),
                    ports=ports,
                    classes=classes,
                    all_packets=entry.capture_level == "AllPackets",
                    l7=entry.include_layer7_data,
                )
            )
    return TraceTargets(out)


POINT_CLASS_OF_OBS = np.array(
    [
        255,  # UNKNOWN
        CLASS_ENDPOINT,  # FROM_ENDPOINT
        CLASS_ENDPOINT,  # TO_ENDPOINT
        CLASS_NETWORK,  # FROM_NETWORK
        CLASS_NETWORK,  # TO_NETWORK
        255,  # STACK
    ],
    dtype=np.uint8,
)
assert len(POINT_CLASS_OF_OBS) == len(ObservationPoint)
