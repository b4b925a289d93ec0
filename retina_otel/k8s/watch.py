"""List-then-watch of the API server with the official ``kubernetes`` client, one thread per resource.

Each :class:`Informer` lists its resource (raw JSON: ``_preload_content=False``, so the client never
builds its model objects, which would cost far more time and memory than the stripped ones), hands the
full set to the cache (which deletes what disappeared), then watches from the list's resourceVersion
with ``allowWatchBookmarks``. It relists on 410 Gone (an ERROR event or an ``ApiException``), on an
ERROR event of any kind, and on a broken stream; it re-watches from the last resourceVersion when a
watch ends cleanly (server timeout) or idles past the read timeout, and lists again when a watch ends
``relist_seconds`` or more after the last list (0: never). Errors back off exponentially with jitter.
``stop()`` (or ``request_stop()``, which does not wait) shuts the socket of the watch in progress down,
so threads end promptly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from retina_otel.k8s.models import (
    namespace_from_raw,
    node_from_raw,
    pod_from_raw,
    retina_endpoint_from_raw,
    service_from_raw,
)
from retina_otel.k8s.store import K8sCache, Kind, Obj
from retina_otel.kubeclient import api_client

__all__ = ["ApiSource", "ClientSettings", "Informer", "Sink", "WatchStats", "make_api_client"]

log = logging.getLogger(__name__)


class _Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class _Broken(Exception):
    """The watch failed in a way that may have lost events: list again."""


@dataclass(frozen=True)
class ClientSettings:
    api_url: str = ""  # empty: kubeconfig when there is one, else in-cluster (retina_otel.kubeclient)
    kubeconfig: str = ""
    context: str = ""
    insecure_skip_tls_verify: bool = False
    token: str = ""


def make_api_client(settings: ClientSettings) -> Any:
    """A ``kubernetes.client.ApiClient`` with a small pool (see :func:`retina_otel.kubeclient.api_client`)."""
    return api_client(
        api_url=settings.api_url,
        kubeconfig=settings.kubeconfig,
        context=settings.context,
        insecure=settings.insecure_skip_tls_verify,
        token=settings.token,
        pool_maxsize=4,
    )


@dataclass
class WatchStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    relists_gone: int = 0
    relists_broken: int = 0
    errors: int = 0


def _lines(resp: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                break
            line, buffer = buffer[:cut], buffer[cut + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


class Sink(Protocol):
    """Where an :class:`Informer` puts what it sees: a :class:`K8sCache`, or a small store of its own
    kind (e.g. :class:`retina_otel.k8s.apiserver.ApiServerSlices`)."""

    def replace(self, kind: Any, objs: Iterable[Any]) -> None: ...

    def upsert(self, kind: Any, obj: Any) -> None: ...

    def delete(self, kind: Any, obj: Any) -> None: ...

    def mark_synced(self, kind: str) -> None: ...


class Informer:
    """List-and-watch loop for one resource, feeding a :class:`K8sCache` (or another :class:`Sink`)."""

    def __init__(
        self,
        kind: Kind | str,
        call: Callable[..., Any],
        convert: Callable[[Mapping[str, Any]], Obj | Any | None],
        cache: Sink,
        *,
        accept: Callable[[Mapping[str, Any]], bool] | None = None,
        label: str = "",
        watch_timeout: int = 300,
        read_timeout: float = 330.0,
        connect_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        relist_seconds: float = 0.0,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.kind = kind
        self.label = label or kind
        self._call = call
        self._convert = convert
        self._accept = accept
        self._cache = cache
        self._watch_timeout = watch_timeout
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._relist_seconds = relist_seconds
        if relist_seconds > 0:
            self._watch_timeout = max(1, min(watch_timeout, int(relist_seconds)))
        self._on_error = on_error
        self._stop = threading.Event()
        self._resp: Any = None
        self._resp_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stats = WatchStats()
        self.resource_version = ""

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"k8s-watch-{self.label}", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end (closes the watch in progress) without waiting for it."""
        self._stop.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        failures = 0
        listed = 0.0
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                    listed = time.monotonic()
                self._watch()
                failures = 0
                if self._relist_seconds > 0 and time.monotonic() - listed >= self._relist_seconds:
                    need_list = True
            except _Gone:
                self.stats.relists_gone += 1
                need_list = True
                failures = 0
                log.info("%s: resourceVersion expired (410), relisting", self.label)
            except Exception as exc:
                if self._stop.is_set():
                    break
                gone = getattr(exc, "status", None) == 410
                if gone:
                    self.stats.relists_gone += 1
                elif isinstance(exc, _Broken) or _is_broken_stream(exc):
                    self.stats.relists_broken += 1
                else:
                    self.stats.errors += 1
                    if self._on_error is not None:
                        self._on_error(self.label, type(exc).__name__)
                need_list = True
                failures += 1
                delay = min(self._backoff_max, self._backoff_base * 2 ** min(failures - 1, 16))
                delay = delay / 2 + random.uniform(0, delay / 2)  # equal jitter
                log.warning("%s: watch failed (%s: %s); relisting in %.1fs", self.label, type(exc).__name__, exc, delay)
                self._stop.wait(delay)

    def _list(self) -> None:
        resp = self._call(_preload_content=False, _request_timeout=(self._connect_timeout, self._read_timeout))
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        self.stats.lists += 1
        items = body.get("items") or []
        objs: list[Any] = []
        for raw in items:
            if self._accept is not None and not self._accept(raw):
                continue
            obj = self._convert(raw)
            if obj is not None:
                objs.append(obj)
        self._cache.replace(self.kind, objs)
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self._cache.mark_synced(self.kind)

    def _watch(self) -> None:
        import urllib3

        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self._watch_timeout,
            "_preload_content": False,
            "_request_timeout": (self._connect_timeout, self._read_timeout),
        }
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        resp = self._call(**kwargs)
        with self._resp_lock:
            self._resp = resp
        self.stats.watches += 1
        try:
            if self._stop.is_set():
                return
            for line in _lines(resp):
                self._event(json.loads(line))
                if self._stop.is_set():
                    return
        except urllib3.exceptions.ReadTimeoutError:
            return  # idle past the read timeout: watch again from the last resourceVersion
        finally:
            with self._resp_lock:
                self._resp = None
            resp.release_conn()
            resp.close()

    def _event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        raw = event.get("object") or {}
        if kind == "ERROR":
            if raw.get("code") == 410:
                raise _Gone()
            raise _Broken(f"ERROR event {raw.get('code')}: {raw.get('reason')} {raw.get('message')}")
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = str(rv)
            return
        self.stats.events += 1
        obj = self._convert(raw)
        if obj is not None:
            if kind == "DELETED" or (self._accept is not None and not self._accept(raw)):
                self._cache.delete(self.kind, obj)
            else:
                self._cache.upsert(self.kind, obj)
        if rv:
            self.resource_version = str(rv)


def _is_broken_stream(exc: BaseException) -> bool:
    import urllib3

    return isinstance(exc, urllib3.exceptions.ProtocolError | ConnectionError | json.JSONDecodeError)


@dataclass(frozen=True)
class WatchPlan:
    pods: bool = True
    services: bool = True
    nodes: bool = True
    namespaces: bool = True
    retina_endpoints: bool = False  # instead of pods (remote context)
    local_node: str = ""  # watch only this node's pods (local context)


class ApiSource:
    """All informers for one cache, plus a janitor that purges expired tombstones."""

    def __init__(
        self,
        cache: K8sCache,
        settings: ClientSettings,
        plan: WatchPlan,
        *,
        watch_timeout: int = 300,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cache = cache
        self.settings = settings
        self.plan = plan
        self._opts: dict[str, Any] = {
            "watch_timeout": watch_timeout,
            "read_timeout": watch_timeout + 30.0,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
            "on_error": on_error,
        }
        self.informers: list[Informer] = []
        self._clients: list[Any] = []
        self._janitor: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        from kubernetes import client

        plan = self.plan
        kinds: list[tuple[Kind, str, Callable[[Any], Callable[..., Any]], Any, Any]] = []
        node = plan.local_node

        def on_node(raw: Mapping[str, Any]) -> bool:
            return ((raw.get("spec") or {}).get("nodeName") or "") == node

        if plan.retina_endpoints:
            kinds.append(("pods", "retinaendpoints", lambda api: _custom_lister(api), retina_endpoint_from_raw, None))
        elif plan.pods:
            selector = {"field_selector": f"spec.nodeName={node}"} if node else {}
            kinds.append(
                (
                    "pods",
                    "pods",
                    lambda api: _bind(client.CoreV1Api(api).list_pod_for_all_namespaces, selector),
                    pod_from_raw,
                    on_node if node else None,
                )
            )
        if plan.services:
            kinds.append(
                (
                    "services",
                    "services",
                    lambda api: client.CoreV1Api(api).list_service_for_all_namespaces,
                    service_from_raw,
                    None,
                )
            )
        if plan.nodes:
            kinds.append(("nodes", "nodes", lambda api: client.CoreV1Api(api).list_node, node_from_raw, None))
        if plan.namespaces:
            kinds.append(
                ("namespaces", "namespaces", lambda api: client.CoreV1Api(api).list_namespace, namespace_from_raw, None)
            )
        self.cache.expect(k for k, *_ in kinds)
        for kind, label, bind, convert, accept in kinds:
            api = make_api_client(self.settings)  # one pool per informer: watches hold their connection
            self._clients.append(api)
            informer = Informer(kind, bind(api), convert, self.cache, accept=accept, label=label, **self._opts)
            self.informers.append(informer)
            informer.start()
        self._janitor = threading.Thread(target=self._purge_loop, name="k8s-cache-janitor", daemon=True)
        self._janitor.start()

    def _purge_loop(self) -> None:
        interval = max(0.5, min(10.0, self.cache.grace_ns / 4e9))
        while not self._stop.wait(interval):
            self.cache.purge()

    def shutdown(self) -> None:
        self._stop.set()
        for informer in self.informers:
            informer.request_stop()
        for informer in self.informers:
            informer.stop()
        if self._janitor is not None:
            self._janitor.join(5)
        for api in self._clients:
            try:
                api.close()
            except Exception:  # closing a pool must not fail shutdown
                log.debug("closing the API client failed", exc_info=True)
        self._clients.clear()

    def stats(self) -> dict[str, WatchStats]:
        return {i.label: i.stats for i in self.informers}


def _bind(fn: Callable[..., Any], fixed: Mapping[str, Any]) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return fn(**fixed, **kwargs)

    return call


def _custom_lister(api: Any) -> Callable[..., Any]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)

    def call(**kwargs: Any) -> Any:
        return custom.list_custom_object_for_all_namespaces("retina.sh", "v1alpha1", "retinaendpoints", **kwargs)

    return call
