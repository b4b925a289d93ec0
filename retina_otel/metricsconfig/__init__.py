"""Watching MetricsConfiguration objects (``retina.sh/v1alpha1``, cluster scoped) for the agent.

Only an object whose ``status.state`` is ``Accepted`` is applied (the operator validates and accepts at
most one per cluster). When several are Accepted, the oldest (creationTimestamp, then name) wins, as
the operator would have accepted it first. The callback gets ``(name, spec)`` whenever the effective
spec changes and ``(None, None)`` when no Accepted object remains.

The watcher is a :class:`retina_otel.k8s.watch.Informer` (the agent's one list/watch loop: watch from
the list's resourceVersion with bookmarks, relist on 410 Gone, a broken stream or every
``relist_seconds``, exponential backoff with jitter on errors) feeding a small store of the objects by
name. ``shutdown`` closes the open watch response so it stops at once.

The same watcher follows other cluster-scoped retina.sh objects with their own rule: ``plural`` and
``select`` (e.g. TracesConfigurations, where every Accepted object applies:
:mod:`retina_otel.traces.watch`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from retina_otel.k8s.watch import Informer, WatchStats

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
    accepted = [obj for obj in objects.values() if str(((obj.get("status") or {}).get("state")) or "") == ACCEPTED]
    if not accepted:
        return None, None

    def order(obj: Mapping[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))

    chosen = min(accepted, key=order)
    return str((chosen.get("metadata") or {}).get("name") or ""), dict(chosen.get("spec") or {})


class _ByName:
    """The :class:`~retina_otel.k8s.watch.Sink` of the watcher: raw objects by name; every change
    re-evaluates the effective configuration."""

    def __init__(self, evaluate: Callable[[Mapping[str, Mapping[str, Any]]], None], synced: threading.Event) -> None:
        self.objects: dict[str, Mapping[str, Any]] = {}
        self._evaluate = evaluate
        self._synced = synced

    def replace(self, kind: Any, objs: Iterable[Mapping[str, Any]]) -> None:
        self.objects = {_name(obj): obj for obj in objs}
        self._evaluate(self.objects)

    def upsert(self, kind: Any, obj: Mapping[str, Any]) -> None:
        self.objects[_name(obj)] = obj
        self._evaluate(self.objects)

    def delete(self, kind: Any, obj: Mapping[str, Any]) -> None:
        if self.objects.pop(_name(obj), None) is not None:
            self._evaluate(self.objects)

    def mark_synced(self, kind: str) -> None:
        self._synced.set()


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _named(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return raw if _name(raw) else None


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
        """``select(objects by name)`` -> the effective ``(name, spec)``; ``kind`` names it in log lines.

        ``watch_timeout_seconds``: how long one watch request lasts before it is re-opened from the last
        resourceVersion; ``relist_seconds``: a full list at least this often; ``retry_seconds``: the first
        back-off after an error (doubling up to 30 s)."""
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
        self._informer: Informer | None = None
        self._api: Any = None
        self._current: tuple[str | None, Mapping[str, Any] | None] = (None, None)
        self._reported = False
        self.synced = threading.Event()  # set after the first successful list
        self._store = _ByName(self._evaluate, self.synced)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._informer is not None:
            return
        from kubernetes import client

        from retina_otel.kubeclient import api_client

        self._api = api_client(api_url=self._api_url, kubeconfig=self._kubeconfig, context=self._context)
        custom = client.CustomObjectsApi(self._api)
        plural = self._plural

        def call(**kwargs: Any) -> Any:
            return custom.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)

        self._informer = Informer(
            self._kind,
            call,
            _named,
            self._store,
            label=self._kind,
            watch_timeout=max(1, int(self._watch_timeout)),
            read_timeout=self._watch_timeout + 2.0,  # idle past it: re-watch from the resourceVersion
            relist_seconds=self._relist_seconds,
            backoff_base=self._retry,
        )
        self._informer.start()

    def shutdown(self) -> None:
        informer, self._informer = self._informer, None
        if informer is not None:
            informer.stop()
        api, self._api = self._api, None
        if api is not None:
            try:
                api.close()
            except Exception:  # closing a pool must not fail shutdown
                log.debug("closing the API client failed", exc_info=True)

    @property
    def current(self) -> tuple[str | None, Mapping[str, Any] | None]:
        return self._current

    @property
    def stats(self) -> WatchStats:
        """Lists, watches, events, relists and errors of the watch (zeros before ``start``)."""
        return self._informer.stats if self._informer is not None else WatchStats()

    # -- internals ---------------------------------------------------------------------------------
    def _evaluate(self, objects: Mapping[str, Mapping[str, Any]]) -> None:
        current = self._select(objects)
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
