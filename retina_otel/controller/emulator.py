"""kmock's KubernetesEmulator on a loopback port in a background thread, for tests and demos.

The emulator is an aiohttp app; running it in its own thread and event loop lets synchronous code
(the kubectl plugin, the operator's handlers, test assertions) talk to it over HTTP without
blocking it. Resources the operator uses are declared up front, retina.sh CRDs included.
kmock is a development dependency: import this module only from tests and tools.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kmock
from kmock._internal import parsing as _kmock_parsing

from retina_otel.crds import CRDS

__all__ = ["EmulatorThread"]

_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}

_CORE: list[tuple[str, str, bool, set[str]]] = [
    ("v1/pods", "Pod", True, {"status"}),
    ("v1/nodes", "Node", False, {"status"}),
    ("v1/namespaces", "Namespace", False, {"status"}),
    ("v1/secrets", "Secret", True, set()),
    ("v1/events", "Event", True, set()),
    ("batch/v1/jobs", "Job", True, {"status"}),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, {"status"}),
    ("events.k8s.io/v1/events", "Event", True, set()),
]


def _install_namespaces_fix() -> None:
    """kmock 0.8 parses ``/api/v1/namespaces[/NAME]`` as a namespace prefix with no resource and fails
    with a 500; route those paths to the cluster-scoped ``namespaces`` resource instead."""
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


class EmulatorThread:
    """``with EmulatorThread() as emu:`` gives ``emu.url`` and ``emu.emulator`` (the kmock handler)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kmock-emulator", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.emulator: kmock.KubernetesEmulator | None = None
        self.url = ""

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        _install_namespaces_fix()
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Kubernetes emulator did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator failed to start: {self._error}")

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
            self.emulator = emu
            for path, kind, namespaced, subs in _CORE:
                emu.resources[path] = kmock.ResourceInfo(
                    kind=kind, namespaced=namespaced, verbs=_VERBS, subresources=subs,
                    singular=kind.lower(),
                )
            for crd in CRDS:
                spec = crd["spec"]
                emu.resources[f"{spec['group']}/{spec['versions'][0]['name']}/{spec['names']['plural']}"] = (
                    kmock.ResourceInfo(
                        kind=spec["names"]["kind"],
                        namespaced=spec["scope"] == "Namespaced",
                        verbs=_VERBS,
                        subresources={"status"},
                        singular=spec["names"]["singular"],
                        shortnames=set(spec["names"]["shortNames"]),
                    )
                )
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the emulator's loop (to touch ``emulator.objects`` safely)."""

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)
