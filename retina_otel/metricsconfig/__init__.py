"""Watching MetricsConfiguration objects (``retina.sh/v1alpha1``, cluster scoped) for the agent.

Only an object whose ``status.state`` is ``Accepted`` is applied (the operator validates and accepts at
most one per cluster). When several are Accepted, the oldest (creationTimestamp, then name) wins, as
the operator would have accepted it first. The callback gets ``(name, spec)`` whenever the effective
spec changes and ``(None, None)`` when no Accepted object remains.

The watcher is a thread with the synchronous ``kubernetes`` client: list, then watch; on any error it
waits a little and lists again. ``shutdown`` closes the open watch response so it stops at once.

The same watcher follows other cluster-scoped retina.sh objects with their own rule: ``plural`` and
``select`` (e.g. TracesConfigurations, where every Accepted object applies:
:mod:`retina_otel.traces.watch`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "GROUP",
    "PLURAL",
    "VERSION",
    "MetricsConfigurationWatcher",
    "effective_configuration",
]

log = logging.getLogger(__name__)

GROUP = "retina.sh"
VERSION = "v1alpha1"
PLURAL = "metricsconfigurations"
ACCEPTED = "Accepted"

SpecCallback = Callable[[str | None, Mapping[str, Any] | None], None]
Selector = Callable[[Mapping[str, Mapping[str, Any]]], tuple[str | None, Mapping[str, Any] | None]]


def effective_configuration(objects: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, Mapping[str, Any] | None]:
    """The Accepted object's ``(name, spec)`` among ``objects`` (by name), or ``(None, None)``."""
    accepted = [
        obj
        for obj in objects.values()
        if str(((obj.get("status") or {}).get("state")) or "") == ACCEPTED
    ]
    if not accepted:
        return None, None

    def order(obj: Mapping[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))

    chosen = min(accepted, key=order)
    return str((chosen.get("metadata") or {}).get("name") or ""), dict(chosen.get("spec") or {})


class MetricsConfigurationWatcher:
    """Keeps the Accepted MetricsConfiguration current and reports changes. Constructor does no I/O."""

    def __init__(
        self,
        on_change: SpecCallback,
        *,
        api_url: str = "",
        kubeconfig: str = "",
        context: str = "",
        relist_seconds: float = 300.0,
        watch_timeout_seconds: float = 60.0,
        retry_seconds: float = 1.0,
        plural: str = PLURAL,
        kind: str = "MetricsConfiguration",
        select: Selector = effective_configuration,
    ) -> None:
        """``select(objects by name)`` -> the effective ``(name, spec)``; ``kind`` names it in log lines."""
        self._on_change = on_change
        self._plural = plural
        self._kind = kind
        self._select = select
        self._api_url = api_url
        self._kubeconfig = kubeconfig
        self._context = context
        self._relist_seconds = relist_seconds
        self._watch_timeout = watch_timeout_seconds
        self._retry = retry_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._objects: dict[str, Mapping[str, Any]] = {}
        self._current: tuple[str | None, Mapping[str, Any] | None] = (None, None)
        self._reported = False
        self.synced = threading.Event()  # set after the first successful list
        self.errors = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self._kind.lower()}-watch", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        self._close_response()
        if thread is not None:
            thread.join(timeout=10.0)

    @property
    def current(self) -> tuple[str | None, Mapping[str, Any] | None]:
        return self._current

    # -- internals ---------------------------------------------------------------------------------
    def _api(self) -> Any:
        from kubernetes import client

        from retina_otel.kubeclient import api_client

        return client.CustomObjectsApi(
            api_client(api_url=self._api_url, kubeconfig=self._kubeconfig, context=self._context)
        )

    def _close_response(self) -> None:
        with self._response_lock:
            response, self._response = self._response, None
        if response is not None:
            try:
                shutdown = getattr(response, "shutdown", None)
                if callable(shutdown):
                    shutdown()
                response.close()
            except Exception:  # closing a dead connection may fail; nothing to do about it
                pass

    def _run(self) -> None:
        api: Any = None
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self._api()
                self._list(api)
                self._watch(api)
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.errors += 1
                log.warning("%s watch failed (%s); retrying in %.1fs", self._kind, exc, self._retry)
                self._stop.wait(self._retry)

    def _list(self, api: Any) -> None:
        listing = api.list_cluster_custom_object(GROUP, VERSION, self._plural, _request_timeout=30)
        objects: dict[str, Mapping[str, Any]] = {}
        for item in listing.get("items") or ():
            name = (item.get("metadata") or {}).get("name")
            if name:
                objects[str(name)] = item
        self._objects = objects
        self._evaluate()
        self.synced.set()

    def _watch(self, api: Any) -> None:
        """One watch request; returns when it ends, times out (read timeout) or relist time has come."""
        import time

        deadline = time.monotonic() + self._relist_seconds
        response = api.list_cluster_custom_object(
            GROUP,
            VERSION,
            self._plural,
            watch=True,
            _preload_content=False,
            _request_timeout=(10, self._watch_timeout),
        )
        with self._response_lock:
            if self._stop.is_set():
                response.close()
                return
            self._response = response
        try:
            buffer = b""
            for chunk in response.stream(4096, decode_content=True):
                if self._stop.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._event(json.loads(line))
                if time.monotonic() > deadline:
                    return
        finally:
            self._close_response()

    def _event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('reason')} {obj.get('message')}")
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        if kind == "DELETED":
            self._objects.pop(str(name), None)
        elif kind in ("ADDED", "MODIFIED"):
            self._objects[str(name)] = obj
        else:
            return
        self._evaluate()

    def _evaluate(self) -> None:
        current = self._select(self._objects)
        if self._reported and current == self._current:
            return
        self._current = current
        self._reported = True
        name, spec = current
        log.info("%s: %s", self._kind, f"applying {name}" if name else "none Accepted")
        try:
            self._on_change(name, spec)
        except Exception:
            log.exception("%s callback failed", self._kind)
