"""A Kubernetes API for tests, benchmarks and the demo: kmock's ``KubernetesEmulator`` on a loopback port.

The emulator is an asyncio server; :class:`EmulatedCluster` runs it on its own event loop in a
background thread so that synchronous code (the official ``kubernetes`` client, the watch cache's
threads, the kopf operator, the kubectl plugin, test assertions) can talk to it over real HTTP.
Objects are created, patched and deleted over HTTP too, so every change produces the watch event a
real API server would send.

Declared up front: the core resources the agent, the operator and the plugin use, and every retina.sh
CRD (:data:`retina_otel.crds.CRDS`). kmock (0.8) limits worked around here:

* ``/api/v1/namespaces[/<name>[/status|/finalize]]`` is parsed as a *namespaced* path with no resource
  and fails with a 500; :func:`_install_namespaces_fix` routes those paths to the cluster-scoped
  ``namespaces`` resource (only those paths, which kmock cannot serve anyway, are affected).
* resources must be declared before they can be listed; every resource above is.
* 410 Gone and broken watch streams cannot happen on their own; :meth:`EmulatedCluster.inject_watch_error`
  and :meth:`EmulatedCluster.break_next_watch` add one-shot reactions with kmock's DSL.

kmock is a development dependency: import this module only from tests, benchmarks and the demo.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import kmock
from kmock._internal import parsing as _kmock_parsing

from retina_otel.crds import CRDS

__all__ = ["EmulatedCluster"]

T = TypeVar("T")

_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


class _Resource(NamedTuple):
    key: str  # kmock's resource key: "[group/]version/plural"
    kind: str
    namespaced: bool
    subresources: frozenset[str]
    singular: str
    shortnames: frozenset[str] = frozenset()

    @property
    def prefix(self) -> str:
        """The API path prefix: ``/api/v1`` for the core group, else ``/apis/<group>/<version>``."""
        group_version = self.key.rsplit("/", 1)[0]
        return "/api/" + group_version if "/" not in group_version else "/apis/" + group_version

    @property
    def plural(self) -> str:
        return self.key.rsplit("/", 1)[1]


_STATUS = frozenset({"status"})
_CORE = [
    _Resource("v1/pods", "Pod", True, frozenset({"status", "ephemeralcontainers"}), "pod"),
    _Resource("v1/services", "Service", True, _STATUS, "service"),
    _Resource("v1/nodes", "Node", False, _STATUS, "node"),
    _Resource("v1/namespaces", "Namespace", False, _STATUS, "namespace"),
    _Resource("v1/secrets", "Secret", True, frozenset(), "secret"),
    _Resource("v1/events", "Event", True, frozenset(), "event"),
    _Resource("batch/v1/jobs", "Job", True, _STATUS, "job"),
    _Resource(
        "apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, _STATUS,
        "customresourcedefinition",
    ),
    _Resource("events.k8s.io/v1/events", "Event", True, frozenset(), "event"),
    _Resource("discovery.k8s.io/v1/endpointslices", "EndpointSlice", True, frozenset(), "endpointslice"),
]
_CRDS = [
    _Resource(
        f"{spec['group']}/{spec['versions'][0]['name']}/{spec['names']['plural']}",
        spec["names"]["kind"],
        spec["scope"] == "Namespaced",
        _STATUS,
        spec["names"]["singular"],
        frozenset(spec["names"]["shortNames"]),
    )
    for spec in (crd["spec"] for crd in CRDS)
]
_RESOURCES = _CORE + _CRDS

# The helpers' ``kind`` argument: a plural ("pods", "retinaendpoints"; the first declared wins, so
# "events" is the core group's) or a full key ("events.k8s.io/v1/events").
_BY_NAME: dict[str, _Resource] = {}
for _res in _RESOURCES:
    _BY_NAME.setdefault(_res.plural, _res)
    _BY_NAME[_res.key] = _res


def _install_namespaces_fix() -> None:
    """Route ``/api/v1/namespaces[/NAME[/status|/finalize]]`` to the cluster-scoped ``namespaces``
    resource (kmock 0.8 takes ``namespaces`` for a namespace prefix there and fails). Idempotent."""
    original = _kmock_parsing.parse_path
    if getattr(original, "_retina_fixed", False):
        return

    def parse_path(path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
        ):
            return _kmock_parsing.ParsedPath(
                "", "v1", "namespaces", None, parts[3] if len(parts) > 3 else None, parts[4] if len(parts) > 4 else None
            )
        return original(path)

    parse_path._retina_fixed = True  # type: ignore[attr-defined]
    _kmock_parsing.parse_path = parse_path


class EmulatedCluster:
    """Start with ``with EmulatedCluster() as cluster:``; ``cluster.url`` is the API server URL and
    ``cluster.emulator`` the kmock handler (touch it only through :meth:`run`)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.emulator: Any = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> EmulatedCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        _install_namespaces_fix()
        self._thread = threading.Thread(target=self._main, name="kmock-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator did not start") from self._error

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self._loop = None

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for res in _RESOURCES:
                emulator.resources[res.key] = kmock.ResourceInfo(
                    kind=res.kind,
                    namespaced=res.namespaced,
                    verbs=_VERBS,
                    subresources=set(res.subresources),
                    singular=res.singular,
                    shortnames=set(res.shortnames),
                )
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        """Run a coroutine on the emulator's loop and return its result."""
        assert self._loop is not None

        async def wrap() -> T:
            return await coro

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(wrap(), self._loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Run ``fn()`` on the emulator's loop (to touch ``emulator.resources`` or ``.objects`` safely)."""

        async def wrap() -> T:
            return fn()

        return self.run(wrap(), timeout)

    # -- objects over HTTP -------------------------------------------------------------------------

    @staticmethod
    def _path(kind: str, namespace: str | None, name: str | None = None) -> str:
        res = _BY_NAME[kind]
        scope = f"{res.prefix}/namespaces/{namespace}" if res.namespaced else res.prefix
        path = f"{scope}/{res.plural}"
        return f"{path}/{name}" if name else path

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        async def call() -> Any:
            async with self.emulator.request(method, path, json=body) as resp:
                data = await resp.json()
                if resp.status >= 400:
                    raise RuntimeError(f"{method} {path}: {resp.status} {data.get('message')}")
                return data

        return self.run(call())

    def create(self, kind: str, obj: dict[str, Any]) -> Any:
        meta = obj.get("metadata", {})
        return self._request("POST", self._path(kind, meta.get("namespace")), obj)

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any]) -> Any:
        return self._request("PATCH", self._path(kind, namespace, name), patch)

    def replace(self, kind: str, obj: dict[str, Any]) -> Any:
        """Delete and re-create (kmock merges patches, so this is how a key disappears)."""
        meta = obj["metadata"]
        self.delete(kind, meta.get("namespace"), meta["name"])
        return self.create(kind, obj)

    def delete(self, kind: str, namespace: str | None, name: str) -> Any:
        return self._request("DELETE", self._path(kind, namespace, name))

    def preload(self, kind: str, objs: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> int:
        """Store objects without HTTP or watch events (bulk loading before the cache starts)."""

        async def load() -> int:
            key = kmock.resource(_BY_NAME[kind].key)
            count = 0
            for obj in objs:
                meta = obj["metadata"]
                self.emulator.objects[key, meta.get("namespace"), meta["name"]] = obj
                count += 1
            return count

        return self.run(load(), timeout=600)

    # -- faults --------------------------------------------------------------------------------------

    def _once(self, kind: str, make: Any) -> None:
        """A one-shot reaction for the next watch of ``kind``; later watches reach the emulator.

        (A sliced reaction ``[:1]`` counts every request its filter ever saw, so a second injection
        for the same resource would be exhausted already; a callable returning None falls through.)
        """
        fired = threading.Event()

        def react(req: Any) -> Any:
            if fired.is_set():
                return None
            fired.set()
            return make(req)

        async def add() -> None:
            res = kmock.resource(_BY_NAME[kind].key)
            self.emulator[kmock.action.WATCH, res] << react

        self.run(add())

    def inject_watch_error(self, kind: str, code: int = 410, reason: str = "Expired") -> None:
        """The next watch of ``kind`` gets one ERROR event with ``code`` (410: resourceVersion too old)."""
        event = {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": code,
                "reason": reason,
                "message": f"injected {code}",
                "metadata": {},
            },
        }
        self._once(kind, lambda req: iter([event]))

    def break_next_watch(self, kind: str) -> None:
        """The next watch of ``kind`` sends its headers, then the connection is cut (no clean end)."""

        def broken(req: Any) -> Iterator[Any]:
            yield b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "..."}}}\n'
            raw = req._raw_request
            if raw is not None and raw.transport is not None:
                raw.transport.abort()  # the client sees the stream end without its terminating chunk

        self._once(kind, broken)

