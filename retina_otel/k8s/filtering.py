"""Which pods are observed, and keeping the kernel's IP filter map in sync with their addresses.

Two modes, as in Retina:

* annotations (``enable_annotations``): a pod is observed when it or its namespace carries the
  annotation ``retina.sh: observe``;
* namespaces: a pod is observed when its namespace passes the include/exclude filter (include empty:
  every namespace not excluded). flowmetrics, following the Accepted MetricsConfiguration, calls
  :meth:`PodSelection.set_namespace_filter` with its lists (through k8sattributes' ``set_namespace_filter``).

The observed pods' addresses go to an :class:`IpFilter` (the receivers' kernel map, found as the
``ip_filter`` host extension) through a :class:`RefCountedIpSet`: every rule (here one per pod UID, but
any holder may add its own) claims addresses; an address is added to the map when its first claim
appears and removed only when its last claim goes, so two pods briefly sharing an address, or a pod
and another component wanting the same address, never remove each other's entry.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from retina_otel.flows import bytes_to_ip
from retina_otel.k8s.models import NamespaceInfo, PodInfo
from retina_otel.k8s.store import K8sCache, Kind, Obj

__all__ = ["IpFilter", "PodSelection", "RefCountedIpSet"]


@runtime_checkable
class IpFilter(Protocol):
    """The kernel's IP filter map (an LPM trie in the receivers), as the ``ip_filter`` extension."""

    def add_ips(self, ips: list[str]) -> None: ...

    def remove_ips(self, ips: list[str]) -> None: ...


class RefCountedIpSet:
    """Rules claim sets of addresses; the target sees an address while at least one rule claims it."""

    def __init__(self, target: IpFilter | None = None) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._rules: dict[str, frozenset[str]] = {}
        self._counts: dict[str, int] = {}

    def set_rule(self, rule: str, ips: Iterable[str]) -> None:
        new = frozenset(str(ipaddress.ip_address(ip)) for ip in ips)
        with self._lock:
            old = self._rules.get(rule, frozenset())
            if new == old:
                return
            if new:
                self._rules[rule] = new
            else:
                self._rules.pop(rule, None)
            added = [ip for ip in sorted(new - old) if self._incr(ip)]
            removed = [ip for ip in sorted(old - new) if self._decr(ip)]
            if self._target is not None:
                if added:
                    self._target.add_ips(added)
                if removed:
                    self._target.remove_ips(removed)

    def drop_rule(self, rule: str) -> None:
        self.set_rule(rule, ())

    def _incr(self, ip: str) -> bool:
        count = self._counts.get(ip, 0) + 1
        self._counts[ip] = count
        return count == 1

    def _decr(self, ip: str) -> bool:
        count = self._counts.get(ip, 0) - 1
        if count <= 0:
            self._counts.pop(ip, None)
            return True
        self._counts[ip] = count
        return False

    def ips(self) -> set[str]:
        with self._lock:
            return set(self._counts)

    def count(self, ip: str) -> int:
        return self._counts.get(str(ipaddress.ip_address(ip)), 0)


class PodSelection:
    """Decides which cached pods are observed and mirrors their addresses into a :class:`RefCountedIpSet`."""

    def __init__(
        self,
        cache: K8sCache,
        ipset: RefCountedIpSet,
        *,
        enable_annotations: bool = False,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> None:
        self.cache = cache
        self.ipset = ipset
        self.enable_annotations = enable_annotations
        self._include = frozenset(include)
        self._exclude = frozenset(exclude)
        self._lock = threading.RLock()
        self._attached = False

    def attach(self) -> None:
        """Follow the cache from now on and apply the current state."""
        with self._lock:
            if not self._attached:
                self._attached = True
                self.cache.add_listener(self._on_change)
            self.resync()

    def detach(self) -> None:
        with self._lock:
            if self._attached:
                self._attached = False
                self.cache.remove_listener(self._on_change)

    def set_namespace_filter(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        with self._lock:
            self._include = frozenset(include)
            self._exclude = frozenset(exclude)
            self.resync()

    def observed(self, pod: PodInfo) -> bool:
        if self.enable_annotations:
            if pod.observe:
                return True
            ns = self.cache.namespace(pod.namespace)
            return ns is not None and ns.observe
        if pod.namespace in self._exclude:
            return False
        return not self._include or pod.namespace in self._include

    def resync(self) -> None:
        with self._lock:
            for pod in self.cache.pods():
                self._apply(pod)

    def _apply(self, pod: PodInfo) -> None:
        ips = [str(bytes_to_ip(ip)) for ip in pod.ips] if self.observed(pod) else []
        self.ipset.set_rule("pod:" + pod.uid, ips)

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        with self._lock:
            if kind == "pods":
                if isinstance(new, PodInfo):
                    self._apply(new)
                elif isinstance(old, PodInfo):
                    self.ipset.drop_rule("pod:" + old.uid)
            elif kind == "namespaces" and self.enable_annotations:
                ns = new if new is not None else old
                name = ns.name if isinstance(ns, NamespaceInfo) else ""
                for pod in self.cache.pods():
                    if pod.namespace == name:
                        self._apply(pod)
