"""The in-memory metadata cache: stripped objects, IP indices with a short per-IP history, tombstones.

Concurrency: one writer at a time (the watch or file-source threads, serialised by ``_lock``); readers
(the pipeline thread) never lock. Every index is a plain dict whose values are immutable (frozen
objects, tuples), and a writer replaces a value with one ``d[k] = v`` (or ``del``), which is atomic for
readers under the GIL (and internally locked on free-threaded builds). A reader therefore sees, per
key, either the old or the new value, never a half-built one. Swapping whole copied dicts per event
was measured to cost O(size) per change for no benefit here, so it is not done.

IP reuse and late flows: each IP maps to a tuple of :class:`IpClaim` (oldest first, at most
``history`` of them): which pod held the address from ``start_ns`` until ``end_ns`` (0 = still holds
it). A deleted pod's claims end at its deletion and stay resolvable for ``grace_period`` seconds; the
pod itself stays reachable by UID (:meth:`K8sCache.pod_by_uid`) for the same time. A new pod's claim
starts at ``max(creationTimestamp, end of the previous claim)``, so a flow resolves to whichever pod
held the address at the flow's time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from retina_otel.flows import ip_to_bytes
from retina_otel.k8s.models import NamespaceInfo, NodeInfo, PodInfo, ServiceInfo

__all__ = ["Endpoint", "IpClaim", "K8sCache", "Kind", "Listener"]

Kind = Literal["pods", "services", "nodes", "namespaces"]
KINDS: tuple[Kind, ...] = ("pods", "services", "nodes", "namespaces")
Endpoint = PodInfo | ServiceInfo | NodeInfo
Obj = PodInfo | ServiceInfo | NodeInfo | NamespaceInfo
Listener = Callable[[Kind, Obj | None, Obj | None], None]
"""Called as ``listener(kind, old, new)`` after each change, on the writer's thread (keep it short)."""


@dataclass(frozen=True, slots=True)
class IpClaim:
    start_ns: int
    end_ns: int  # 0 while the pod holds the address
    pod: PodInfo


def _as_key(ip: bytes | str) -> bytes:
    return ip if isinstance(ip, bytes) and len(ip) == 16 else ip_to_bytes(ip if isinstance(ip, str) else ip.decode())


class K8sCache:
    """Pods, Services, Nodes and Namespaces by name and IP. Fed by a source (watch or file)."""

    def __init__(
        self,
        *,
        node_name: str = "",
        local_only: bool = False,
        grace_period: float = 60.0,
        history: int = 4,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.node_name = node_name
        self.local_only = local_only
        self.grace_ns = int(grace_period * 1e9)
        self.history = max(1, history)
        self._clock = clock
        self._lock = threading.RLock()
        self._pods: dict[str, PodInfo] = {}  # uid -> live pod
        self._tombstones: dict[str, tuple[PodInfo, int]] = {}  # uid -> (pod, deleted_ns)
        self._ip_claims: dict[bytes, tuple[IpClaim, ...]] = {}
        self._services: dict[str, ServiceInfo] = {}  # "ns/name" -> service
        self._ip_services: dict[bytes, ServiceInfo] = {}
        self._services_by_ns: dict[str, tuple[ServiceInfo, ...]] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._ip_nodes: dict[bytes, NodeInfo] = {}
        self._namespaces: dict[str, NamespaceInfo] = {}
        self._listeners: list[Listener] = []
        self._synced: dict[str, threading.Event] = {}
        self.generation = 0  # bumps on every change that can alter a lookup
        self.meta_generation = 0  # bumps on Service and Node changes (they alter pods' derived metadata)
        # address -> generation of its last change (for overlays), oldest change first; at most
        # MAX_IP_CHANGES entries: older ones are dropped and changed_since() then says "rebuild" (None)
        self.ip_changes: dict[bytes, int] = {}
        self._changes_floor = 0  # changes up to this generation may have been dropped

    # -- sync state ----------------------------------------------------------------------------------

    def expect(self, kinds: Iterable[str]) -> None:
        """Declare which kinds a source feeds; :attr:`synced` waits for all of them."""
        for kind in kinds:
            self._synced.setdefault(kind, threading.Event())

    def mark_synced(self, kind: str) -> None:
        self._synced.setdefault(kind, threading.Event()).set()

    @property
    def synced(self) -> bool:
        return bool(self._synced) and all(e.is_set() for e in self._synced.values())

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in list(self._synced.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(left):
                return False
        return bool(self._synced)

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        for listener in self._listeners:
            listener(kind, old, new)

    # -- writes ----------------------------------------------------------------------------------------

    def upsert(self, kind: Kind, obj: Obj) -> None:
        with self._lock:
            if kind == "pods":
                assert isinstance(obj, PodInfo)
                self._upsert_pod(obj)
            elif kind == "services":
                assert isinstance(obj, ServiceInfo)
                self._upsert_service(obj)
            elif kind == "nodes":
                assert isinstance(obj, NodeInfo)
                self._upsert_node(obj)
            else:
                assert isinstance(obj, NamespaceInfo)
                old_ns = self._namespaces.get(obj.name)
                self._namespaces[obj.name] = obj
                self.generation += 1
                self._notify("namespaces", old_ns, obj)

    def delete(self, kind: Kind, obj: Obj) -> None:
        with self._lock:
            if kind == "pods":
                assert isinstance(obj, PodInfo)
                self._delete_pod(obj.uid)
            elif kind == "services":
                assert isinstance(obj, ServiceInfo)
                self._delete_service(f"{obj.namespace}/{obj.name}")
            elif kind == "nodes":
                assert isinstance(obj, NodeInfo)
                self._delete_node(obj.name)
            else:
                assert isinstance(obj, NamespaceInfo)
                old = self._namespaces.pop(obj.name, None)
                if old is not None:
                    self.generation += 1
                    self._notify("namespaces", old, None)

    def replace(self, kind: Kind, objs: Iterable[Obj]) -> None:
        """The full current set of ``kind`` (a relist): upsert all, delete what is no longer there."""
        with self._lock:
            seen: set[str] = set()
            for obj in objs:
                seen.add(self._key(kind, obj))
                self.upsert(kind, obj)
            if kind == "pods":
                for uid in [u for u in self._pods if u not in seen]:
                    self._delete_pod(uid)
            elif kind == "services":
                for key in [k for k in self._services if k not in seen]:
                    self._delete_service(key)
            elif kind == "nodes":
                for name in [n for n in self._nodes if n not in seen]:
                    self._delete_node(name)
            else:
                for name in [n for n in self._namespaces if n not in seen]:
                    self.delete("namespaces", self._namespaces[name])
            self.purge()

    @staticmethod
    def _key(kind: Kind, obj: Obj) -> str:
        if isinstance(obj, PodInfo):
            return obj.uid
        if isinstance(obj, ServiceInfo):
            return f"{obj.namespace}/{obj.name}"
        return obj.name

    def _upsert_pod(self, pod: PodInfo) -> None:
        if self.local_only and self.node_name and pod.node != self.node_name:
            # Not this node's (the API server ignored the field selector, or the pod moved): not ours.
            if pod.uid in self._pods:
                self._delete_pod(pod.uid)
            return
        now = self._clock()
        old = self._pods.get(pod.uid)
        self._pods[pod.uid] = pod
        self._tombstones.pop(pod.uid, None)
        old_ips = old.ips if old is not None else ()
        for ip in old_ips:
            if ip not in pod.ips:
                self._end_claim(ip, pod.uid, now)
        for ip in pod.ips:
            claims = self._ip_claims.get(ip, ())
            if ip in old_ips and claims and claims[-1].pod.uid == pod.uid and claims[-1].end_ns == 0:
                last = claims[-1]
                self._ip_claims[ip] = (*claims[:-1], IpClaim(last.start_ns, 0, pod))
                continue
            start = pod.created_ns or now
            kept: list[IpClaim] = []
            for claim in claims:
                if claim.pod.uid == pod.uid:
                    continue
                if claim.end_ns == 0:  # a live pod still holding the address: newest pod wins
                    claim = IpClaim(claim.start_ns, max(claim.start_ns, min(now, start)), claim.pod)
                start = max(start, claim.end_ns)
                kept.append(claim)
            kept.append(IpClaim(start, 0, pod))
            self._ip_claims[ip] = tuple(kept[-self.history :])
        self.generation += 1
        for ip in (*old_ips, *pod.ips):
            self._note_change(ip, self.generation)
        self._notify("pods", old, pod)

    def _end_claim(self, ip: bytes, uid: str, now: int) -> None:
        claims = self._ip_claims.get(ip)
        if not claims:
            return
        changed = tuple(IpClaim(c.start_ns, now, c.pod) if c.pod.uid == uid and c.end_ns == 0 else c for c in claims)
        self._ip_claims[ip] = changed

    def _delete_pod(self, uid: str) -> None:
        old = self._pods.pop(uid, None)
        if old is None:
            return
        now = self._clock()
        self._tombstones[uid] = (old, now)
        for ip in old.ips:
            self._end_claim(ip, uid, now)
        self.generation += 1
        for ip in old.ips:
            self._note_change(ip, self.generation)
        self._notify("pods", old, None)

    def _upsert_service(self, svc: ServiceInfo) -> None:
        key = f"{svc.namespace}/{svc.name}"
        old = self._services.get(key)
        self._services[key] = svc
        if old is not None:
            for ip in old.ips:
                if ip not in svc.ips and self._ip_services.get(ip) is old:
                    del self._ip_services[ip]
        for ip in svc.ips:
            self._ip_services[ip] = svc
        self._reindex_ns_services(svc.namespace)
        self.generation += 1
        for ip in (*(old.ips if old is not None else ()), *svc.ips):
            self._note_change(ip, self.generation)
        self.meta_generation += 1
        self._notify("services", old, svc)

    def _delete_service(self, key: str) -> None:
        old = self._services.pop(key, None)
        if old is None:
            return
        for ip in old.ips:
            if self._ip_services.get(ip) is old:
                del self._ip_services[ip]
        self._reindex_ns_services(old.namespace)
        self.generation += 1
        for ip in old.ips:
            self._note_change(ip, self.generation)
        self.meta_generation += 1
        self._notify("services", old, None)

    def _reindex_ns_services(self, namespace: str) -> None:
        prefix = namespace + "/"
        found = tuple(
            sorted((s for k, s in self._services.items() if k.startswith(prefix) and s.selector), key=lambda s: s.name)
        )
        if found:
            self._services_by_ns[namespace] = found
        else:
            self._services_by_ns.pop(namespace, None)

    def _upsert_node(self, node: NodeInfo) -> None:
        old = self._nodes.get(node.name)
        self._nodes[node.name] = node
        if old is not None:
            for ip in old.ips:
                if ip not in node.ips and self._ip_nodes.get(ip) is old:
                    del self._ip_nodes[ip]
        for ip in node.ips:
            self._ip_nodes[ip] = node
        self.generation += 1
        for ip in (*(old.ips if old is not None else ()), *node.ips):
            self._note_change(ip, self.generation)
        self.meta_generation += 1
        self._notify("nodes", old, node)

    def _delete_node(self, name: str) -> None:
        old = self._nodes.pop(name, None)
        if old is None:
            return
        for ip in old.ips:
            if self._ip_nodes.get(ip) is old:
                del self._ip_nodes[ip]
        self.generation += 1
        for ip in old.ips:
            self._note_change(ip, self.generation)
        self.meta_generation += 1
        self._notify("nodes", old, None)

    def purge(self) -> int:
        """Forget tombstones and ended claims older than the grace period; returns how many went."""
        with self._lock:
            limit = self._clock() - self.grace_ns
            removed = 0
            for uid in [u for u, (_, deleted) in self._tombstones.items() if deleted < limit]:
                del self._tombstones[uid]
                removed += 1
            for ip in [ip for ip, cl in self._ip_claims.items() if any(0 < c.end_ns < limit for c in cl)]:
                kept = tuple(c for c in self._ip_claims[ip] if not 0 < c.end_ns < limit)
                if kept:
                    self._ip_claims[ip] = kept
                else:
                    del self._ip_claims[ip]
                removed += 1
                self._note_change(ip, self.generation + 1)
            if removed:
                self.generation += 1
            return removed

    # -- lookups (lock-free) ---------------------------------------------------------------------------

    def claims(self, ip: bytes) -> tuple[IpClaim, ...]:
        """The address's pod history, oldest first (16-byte key)."""
        return self._ip_claims.get(ip, ())

    def pod_by_ip(self, ip: bytes | str, time_ns: int | None = None) -> PodInfo | None:
        """The pod that held ``ip`` at ``time_ns`` (default now), including deleted pods within grace."""
        claims = self._ip_claims.get(ip if type(ip) is bytes and len(ip) == 16 else _as_key(ip))
        if not claims:
            return None
        if len(claims) == 1 and claims[0].end_ns == 0:
            return claims[0].pod
        return self.claim_at(claims, self._clock() if time_ns is None else time_ns)

    def claim_at(self, claims: tuple[IpClaim, ...], t: int) -> PodInfo | None:
        chosen = claims[0]
        for claim in claims:
            if claim.start_ns <= t:
                chosen = claim
            else:
                break
        if chosen.end_ns and t > chosen.end_ns + self.grace_ns:
            return None
        return chosen.pod

    def service_by_ip(self, ip: bytes | str) -> ServiceInfo | None:
        return self._ip_services.get(_as_key(ip))

    def node_by_ip(self, ip: bytes | str) -> NodeInfo | None:
        return self._ip_nodes.get(_as_key(ip))

    def lookup(self, ip: bytes | str, time_ns: int | None = None) -> Endpoint | None:
        """Pod, else Service, else Node for an address."""
        key = ip if type(ip) is bytes and len(ip) == 16 else _as_key(ip)
        claims = self._ip_claims.get(key)
        if claims:
            if len(claims) == 1 and claims[0].end_ns == 0:
                return claims[0].pod
            pod = self.claim_at(claims, self._clock() if time_ns is None else time_ns)
            if pod is not None:
                return pod
        return self._ip_services.get(key) or self._ip_nodes.get(key)

    def zone_of(self, node: str) -> str:
        info = self._nodes.get(node)
        return info.zone if info is not None else ""

    def node(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes.values())

    def pod_by_uid(self, uid: str) -> PodInfo | None:
        """A live pod, or a deleted one within the grace period."""
        pod = self._pods.get(uid)
        if pod is not None:
            return pod
        tomb = self._tombstones.get(uid)
        if tomb is not None and self._clock() <= tomb[1] + self.grace_ns:
            return tomb[0]
        return None

    def pods(self) -> list[PodInfo]:
        return list(self._pods.values())

    def namespace(self, name: str) -> NamespaceInfo | None:
        return self._namespaces.get(name)

    def service(self, namespace: str, name: str) -> ServiceInfo | None:
        return self._services.get(f"{namespace}/{name}")

    def services_of(self, pod: PodInfo) -> tuple[ServiceInfo, ...]:
        """Services in the pod's namespace whose selector matches its labels (by name)."""
        candidates = self._services_by_ns.get(pod.namespace, ())
        if not candidates:
            return ()
        labels = dict(pod.labels)
        return tuple(s for s in candidates if all(labels.get(k) == v for k, v in s.selector))

    MAX_IP_CHANGES = 65536
    """Addresses remembered in :attr:`ip_changes` (a bound under pod churn: each is ~100 bytes)."""

    def _note_change(self, ip: bytes, generation: int) -> None:
        """Record that ``ip`` changed at ``generation`` (moved to the end: the log stays in generation
        order); beyond :attr:`MAX_IP_CHANGES` the oldest half is dropped. Called under the lock."""
        changes = self.ip_changes
        changes.pop(ip, None)
        changes[ip] = generation
        if len(changes) > self.MAX_IP_CHANGES:
            drop = len(changes) - self.MAX_IP_CHANGES // 2
            for old in list(itertools.islice(changes, drop)):
                self._changes_floor = max(self._changes_floor, changes.pop(old))

    def changed_since(self, generation: int) -> list[bytes] | None:
        """Addresses whose resolution may have changed after ``generation``, newest first; None when
        changes that old are no longer remembered (the caller rebuilds from the whole cache). Costs the
        number of changes since ``generation``, not the size of the log."""
        with self._lock:
            if generation < self._changes_floor:
                return None
            out: list[bytes] = []
            for ip, g in reversed(self.ip_changes.items()):
                if g <= generation:
                    break
                out.append(ip)
            return out

    def ip_index(self) -> tuple[dict[bytes, tuple[IpClaim, ...]], dict[bytes, ServiceInfo], dict[bytes, NodeInfo]]:
        """The three address indices (for building a vectorised lookup table); do not modify."""
        return self._ip_claims, self._ip_services, self._ip_nodes

    def stats(self) -> dict[str, int]:
        return {
            "pods": len(self._pods),
            "tombstones": len(self._tombstones),
            "pod_ips": len(self._ip_claims),
            "services": len(self._services),
            "nodes": len(self._nodes),
            "namespaces": len(self._namespaces),
        }
