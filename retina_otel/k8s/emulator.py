"""A Kubernetes API for tests, benchmarks and the demo: kmock's ``KubernetesEmulator`` on a loopback port.

The emulator is an asyncio server; :class:`EmulatedCluster` runs it on its own event loop in a
background thread so that synchronous code (the official ``kubernetes`` client, the watch cache's
threads) can talk to it over real HTTP. Objects are created, patched and deleted over HTTP too, so
every change produces the watch event a real API server would send.

kmock (0.8) limits worked around here:

* ``GET /api/v1/namespaces[/<name>]`` is parsed as a *namespaced* path with no resource and fails;
  :class:`_Emulator` rewrites the cluster-scoped Namespace paths to a private plural before kmock
  parses them (the client still sends and receives ordinary Namespace requests).
* resources must be declared before they can be listed; every resource the cache watches is.
* 410 Gone and broken watch streams cannot happen on their own; :meth:`EmulatedCluster.inject_watch_error`
  and :meth:`EmulatedCluster.break_next_watch` add one-shot reactions with kmock's DSL.

kmock is a development dependency: import this module only from tests, benchmarks and the demo.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import Awaitable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import kmock

__all__ = ["RESOURCES", "EmulatedCluster"]

T = TypeVar("T")

# (group/version, plural) -> API path prefix for the resources the cache watches.
RESOURCES: dict[str, tuple[str, str, bool]] = {
    # kind: (resource key for kmock, collection path, namespaced)
    "pods": ("v1/pods", "/api/v1", True),
    "services": ("v1/services", "/api/v1", True),
    "nodes": ("v1/nodes", "/api/v1", False),
    "namespaces": ("v1/k8snamespaces", "/api/v1", False),
    "retinaendpoints": ("retina.sh/v1alpha1/retinaendpoints", "/apis/retina.sh/v1alpha1", True),
}

_NS_PATH = re.compile(r"^/api/v1/namespaces(/[^/]+)?/?$")


class _Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with Namespace paths rewritten so that kmock can parse them."""

    async def __call__(self, raw_request: Any) -> Any:
        match = _NS_PATH.match(raw_request.path)
        if match:
            rest = raw_request.rel_url.query_string
            new = "/api/v1/k8snamespaces" + (match.group(1) or "")
            raw_request = raw_request.clone(rel_url=new + ("?" + rest if rest else ""))
        return await super().__call__(raw_request)


class EmulatedCluster:
    """Start with ``with EmulatedCluster() as cluster:``; ``cluster.url`` is the API server URL."""

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
        self._thread = threading.Thread(target=self._main, name="kmock-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("the emulator did not start") from self._error

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self._loop = None

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with _Emulator() as emulator, kmock.Server(emulator) as server:
            for key, _prefix, _namespaced in RESOURCES.values():
                emulator.resources[key] = kmock.ResourceInfo()
            emulator.resources["retina.sh/v1alpha1/retinaendpoints"].namespaced = True
            emulator.resources["retina.sh/v1alpha1/retinaendpoints"].kind = "RetinaEndpoint"
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

    # -- objects over HTTP -------------------------------------------------------------------------

    @staticmethod
    def _path(kind: str, namespace: str | None, name: str | None = None) -> str:
        _key, prefix, namespaced = RESOURCES[kind]
        plural = "retinaendpoints" if kind == "retinaendpoints" else kind
        path = f"{prefix}/namespaces/{namespace}/{plural}" if namespaced else f"{prefix}/{plural}"
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
            key = kmock.resource(RESOURCES[kind][0])
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
            res = kmock.resource(RESOURCES[kind][0])
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

    def watch_requests(self, kind: str) -> int:
        """How many watch requests for ``kind`` the emulator has seen."""
        key = kmock.resource(RESOURCES[kind][0])

        async def count() -> int:
            return sum(1 for r in self.emulator._requests if r.action == kmock.action.WATCH and r.resource == key)

        return self.run(count())

    def list_requests(self, kind: str) -> int:
        key = kmock.resource(RESOURCES[kind][0])

        async def count() -> int:
            return sum(1 for r in self.emulator._requests if r.action == kmock.action.LIST and r.resource == key)

        return self.run(count())
