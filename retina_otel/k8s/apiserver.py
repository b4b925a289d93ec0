"""Where the Kubernetes API server is, as this node's sockets see it.

Three sources, combined by :class:`ApiServerLocator`:

1. ``override`` (the tcplatency receiver's ``apiserver_ips``): when given, exactly these addresses and
   nothing else (no watch, no environment);
2. the ``default/kubernetes`` Service's EndpointSlices (label ``kubernetes.io/service-name=kubernetes``):
   the real control-plane addresses, which the node's kubelet and host-network pods connect to. Kept
   current by an :class:`~retina_otel.k8s.watch.Informer` (list, then watch; relist on 410 or a broken
   stream), so a control-plane move or scale-out reaches the kernel within seconds;
3. ``$KUBERNETES_SERVICE_HOST`` (set in every pod): the Service's cluster IP that pods' sockets
   connect to (NAT happens below the socket), or a name (some managed clusters set the API server's
   DNS name), resolved with ``getaddrinfo`` and re-resolved every ``resolve_interval`` seconds.

Sources 2 and 3 are merged. The label selector is sent to the server and applied again here (an API
server, or kmock, may ignore it). ``kubernetes`` is imported only when the watch starts.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SERVICE_NAME_LABEL",
    "ApiServerLocator",
    "ApiServerSlices",
    "EndpointSliceInfo",
    "is_apiserver_slice",
    "resolve_host",
    "slice_from_raw",
]

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NAMESPACE = "default"
SERVICE = "kubernetes"


@dataclass(frozen=True, slots=True)
class EndpointSliceInfo:
    name: str
    ips: tuple[str, ...]  # addresses of endpoints not marked unready


def is_apiserver_slice(raw: Mapping[str, Any]) -> bool:
    meta = raw.get("metadata") or {}
    labels = meta.get("labels") or {}
    return meta.get("namespace", NAMESPACE) == NAMESPACE and labels.get(SERVICE_NAME_LABEL) == SERVICE


def slice_from_raw(raw: Mapping[str, Any]) -> EndpointSliceInfo | None:
    """The slice's usable addresses. Endpoints with ``conditions.ready: false`` are left out (a
    missing condition means ready, as the API documents); addresses that do not parse are skipped."""
    name = (raw.get("metadata") or {}).get("name")
    if not name:
        return None
    ips: list[str] = []
    for endpoint in raw.get("endpoints") or ():
        if ((endpoint or {}).get("conditions") or {}).get("ready") is False:
            continue
        for address in endpoint.get("addresses") or ():
            try:
                ips.append(str(ipaddress.ip_address(str(address))))
            except ValueError:
                log.debug("endpoint slice %s: %r is not an IP address", name, address)
    return EndpointSliceInfo(name=str(name), ips=tuple(ips))


class ApiServerSlices:
    """The informer's sink: the current slices by name; ``on_change()`` after every change."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._slices: dict[str, EndpointSliceInfo] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self.synced = threading.Event()

    def addresses(self) -> set[str]:
        with self._lock:
            return {ip for s in self._slices.values() for ip in s.ips}

    def replace(self, kind: Any, objs: Iterable[EndpointSliceInfo]) -> None:
        with self._lock:
            self._slices = {s.name: s for s in objs}
        self._on_change()

    def upsert(self, kind: Any, obj: EndpointSliceInfo) -> None:
        with self._lock:
            self._slices[obj.name] = obj
        self._on_change()

    def delete(self, kind: Any, obj: EndpointSliceInfo) -> None:
        with self._lock:
            self._slices.pop(obj.name, None)
        self._on_change()

    def mark_synced(self, kind: str) -> None:
        self.synced.set()


def resolve_host(host: str) -> set[str]:
    """An IP literal as itself; a name resolved to every address ``getaddrinfo`` gives (empty when it
    does not resolve: the caller tries again later)."""
    host = host.strip().strip("[]")
    if not host:
        return set()
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        log.warning("KUBERNETES_SERVICE_HOST=%r does not resolve (%s); retrying later", host, exc)
        return set()
    return {str(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos}


class ApiServerLocator:
    """Keeps ``on_change(sorted addresses)`` informed of where the API server is (module docstring).

    ``watch`` is the :class:`~retina_otel.k8s.watch.ClientSettings` to watch EndpointSlices with, or
    None for no watch. ``on_change`` runs on the locator's threads, only when the set changed.
    """

    def __init__(
        self,
        on_change: Callable[[list[str]], None],
        *,
        override: Iterable[str] = (),
        use_service_host: bool = True,
        watch: Any = None,
        resolve_interval: float = 60.0,
        on_error: Callable[[str, str], None] | None = None,
        backoff_max: float = 30.0,
    ) -> None:
        self._on_change = on_change
        self._override = sorted({str(ipaddress.ip_address(ip)) for ip in override})
        self._use_service_host = use_service_host
        self._watch_settings = watch
        self._resolve_interval = resolve_interval
        self._on_error = on_error
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._current: list[str] | None = None
        self._from_env: set[str] = set()
        self.slices = ApiServerSlices(self._publish)
        self._informer: Any = None
        self._client: Any = None
        self._stop = threading.Event()
        self._resolver: threading.Thread | None = None

    @property
    def watching(self) -> bool:
        return self._informer is not None

    def addresses(self) -> list[str]:
        """The addresses now (what ``on_change`` was last called with)."""
        with self._lock:
            return list(self._current or [])

    def start(self) -> None:
        if self._override:
            self._publish()
            return
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "") if self._use_service_host else ""
        self._from_env = resolve_host(host) if host and _is_ip(host) else set()
        self._publish()
        if host and not _is_ip(host):  # a name: resolved in the background (DNS may be slow or down)
            self._resolver = threading.Thread(
                target=self._resolve_loop, args=(host,), name="apiserver-resolve", daemon=True
            )
            self._resolver.start()
        if self._watch_settings is not None:
            self._start_watch()

    def _start_watch(self) -> None:
        from kubernetes import client

        from retina_otel.k8s.watch import Informer, make_api_client

        self._client = make_api_client(self._watch_settings)
        lister = client.DiscoveryV1Api(self._client).list_namespaced_endpoint_slice

        def call(**kwargs: Any) -> Any:
            return lister(NAMESPACE, label_selector=f"{SERVICE_NAME_LABEL}={SERVICE}", **kwargs)

        self._informer = Informer(
            "endpointslices",
            call,
            slice_from_raw,
            self.slices,
            accept=is_apiserver_slice,
            label="apiserver-endpointslices",
            backoff_max=self._backoff_max,
            on_error=self._on_error,
        )
        self._informer.start()

    def _resolve_loop(self, host: str) -> None:
        while not self._stop.is_set():
            found = resolve_host(host)
            if found:  # a failed look-up keeps the last good answer
                self._from_env = found
                self._publish()
            if self._stop.wait(self._resolve_interval):
                return

    def _publish(self) -> None:
        found = list(self._override) if self._override else sorted(self._from_env | self.slices.addresses())
        with self._lock:
            if found == self._current:
                return
            self._current = found
            try:
                self._on_change(list(found))
            except Exception:
                log.exception("applying the API server's addresses failed")

    def shutdown(self) -> None:
        self._stop.set()
        if self._informer is not None:
            self._informer.stop()
            self._informer = None
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                log.debug("closing the API client failed", exc_info=True)
            self._client = None
        if self._resolver is not None:
            self._resolver.join(5)
            self._resolver = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
