"""Kubernetes metadata for flow enrichment: a watch cache of stripped objects, or a YAML file instead.

* :mod:`.models`: the stripped objects (:class:`PodInfo`, :class:`ServiceInfo`, ...) and owner-reference
  workload rules;
* :mod:`.store`: :class:`K8sCache`, lock-free lookups by IP (and time), tombstones, listeners;
* :mod:`.watch`: list-and-watch threads with the official client (:class:`ApiSource`);
* :mod:`.filesource`: the standalone YAML source (:class:`FileSource`);
* :mod:`.filtering`: opt-in rules and the reference-counted kernel IP filter (:class:`IpFilter`);
* :mod:`retina_otel.testing_k8s`: kmock's emulator on a loopback port, for tests, benchmarks and the demo.

:class:`CacheService` bundles a cache with its source (the k8sattributes processor builds one from its
config and offers the cache as the ``k8s_cache`` host extension).
"""

from __future__ import annotations

from typing import Protocol

from retina_otel.k8s.filtering import IpFilter, PodSelection, RefCountedIpSet
from retina_otel.k8s.models import NamespaceInfo, NodeInfo, PodInfo, ServiceInfo
from retina_otel.k8s.store import Endpoint, IpClaim, K8sCache

__all__ = [
    "CacheService",
    "Endpoint",
    "IpClaim",
    "IpFilter",
    "K8sCache",
    "NamespaceInfo",
    "NodeInfo",
    "PodInfo",
    "PodSelection",
    "RefCountedIpSet",
    "ServiceInfo",
]


class _Source(Protocol):
    def start(self) -> None: ...

    def shutdown(self) -> None: ...


class CacheService:
    """A :class:`K8sCache` and the source that fills it; ``start``/``shutdown`` are idempotent."""

    def __init__(self, cache: K8sCache, source: _Source) -> None:
        self.cache = cache
        self.source = source
        self._state = "new"

    def start(self) -> None:
        if self._state == "new":
            self._state = "started"
            self.source.start()

    def shutdown(self) -> None:
        if self._state == "started":
            self.source.shutdown()
        self._state = "stopped"
