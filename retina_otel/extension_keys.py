"""The extensions built-in components offer each other, with the type each service has.

=============  ==========================  ====================================================
key            offered by                  used by
=============  ==========================  ====================================================
``ip_filter``  packetparser receiver       k8sattributes (keeps the kernel's IP filter in sync)
``dns_chain``  packetparser receiver       dns receiver (its TC source tail-calls from it)
``tcp_latency`` tcplatency receiver        tcplatency processor (RTT per flow)
``k8s_cache``  k8sattributes processor     flowmetrics, hubblemetrics (namespace filter, pod deletions),
                                           tcplatency (API settings), nodeconnectivity (nodes),
                                           spans connector (pod metadata of connection ends)
=============  ==========================  ====================================================

A component may return its services under these keys or their names (``{"ip_filter": self}``); the
agent registers them under the typed keys its factory lists in ``provides``, checking each service's
type when it registers them (:mod:`retina_otel.service`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from retina_otel.bpf.chain import ProgramChain
from retina_otel.extensions import ExtensionKey
from retina_otel.k8s.filtering import IpFilter
from retina_otel.k8s.store import K8sCache

if TYPE_CHECKING:
    from retina_otel.k8s.watch import ClientSettings

__all__ = ["DNS_CHAIN", "IP_FILTER", "K8S_CACHE", "TCP_LATENCY", "K8sMetadata", "LatencySource"]


@runtime_checkable
class LatencySource(Protocol):
    """The tcplatency receiver's per-flow table (see :mod:`retina_otel.processors.tcplatency`)."""

    def table(self) -> Any: ...

    def track_flows(self) -> None:
        """Keep the per-flow table (until called, only API-server connections are followed)."""

    def untrack_flows(self) -> None:
        """Undo one track_flows (the last one stops the per-flow table)."""


@runtime_checkable
class K8sMetadata(Protocol):
    """What k8sattributes offers the components that follow the same Kubernetes objects: its watch cache
    (``None`` until it has one), the API settings it watches with (``None`` with a file source), a
    namespace filter and notices of deleted pods."""

    @property
    def cache(self) -> K8sCache | None: ...

    def api_settings(self) -> ClientSettings | None: ...

    def set_namespace_filter(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None: ...

    def add_pod_deletion_listener(self, listener: Any) -> None: ...


IP_FILTER: ExtensionKey[IpFilter] = ExtensionKey("ip_filter", IpFilter)  # type: ignore[type-abstract]
DNS_CHAIN: ExtensionKey[ProgramChain] = ExtensionKey("dns_chain", ProgramChain)  # type: ignore[type-abstract]
TCP_LATENCY: ExtensionKey[LatencySource] = ExtensionKey("tcp_latency", LatencySource)  # type: ignore[type-abstract]
K8S_CACHE: ExtensionKey[K8sMetadata] = ExtensionKey("k8s_cache", K8sMetadata)  # type: ignore[type-abstract]
