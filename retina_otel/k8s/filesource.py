"""Standalone metadata from a YAML file, for hosts without Kubernetes and for the demo.

Format (every section optional)::

    nodes:
      - name: node-a
        ips: [198.18.0.1]
        zone: zone-1
    namespaces:
      - name: shop
        labels: {team: web}
        annotations: {retina.sh: observe}
    endpoints:                     # pods
      - name: checkout-7f9c
        namespace: shop            # default "default"
        uid: 1b4e...               # default "<namespace>/<name>"
        ips: [198.18.3.7, "2001:db8:3::7"]
        labels: {app: checkout}
        workload: {kind: Deployment, name: checkout}   # or workload_kind / workload_name
        node: node-a
        annotations: {retina.sh: observe}
    services:
      - name: checkout
        namespace: shop
        ips: [198.18.100.1]
        selector: {app: checkout}

The file is polled for a changed modification time or size (``poll_interval``, default 1 s) and every
change replaces the whole cache content, exactly like a relist (removed endpoints become tombstones).
A change is loaded once it has been stable for one poll (same modification time and size on two polls
in a row): a writer that truncates and then writes (most editors, ``open(path, "w")``) is otherwise
seen half-way, as an empty file that would remove every endpoint. A file that fails to parse is logged
and the previous content kept.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from retina_otel.k8s.models import (
    OBSERVE_ANNOTATION,
    OBSERVE_VALUE,
    NamespaceInfo,
    NodeInfo,
    PodInfo,
    ServiceInfo,
    _ips,
    _labels,
)
from retina_otel.k8s.store import K8sCache

__all__ = ["FileSource", "load_file"]

log = logging.getLogger(__name__)


def _observe(item: Mapping[str, Any]) -> bool:
    return str((item.get("annotations") or {}).get(OBSERVE_ANNOTATION, "")) == OBSERVE_VALUE


def load_file(path: str | Path) -> dict[str, list[Any]]:
    """Parse the file into stripped objects by kind (raises on malformed content)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    pods: list[PodInfo] = []
    for item in data.get("endpoints") or ():
        name = str(item["name"])
        namespace = str(item.get("namespace") or "default")
        workload = item.get("workload") or {}
        labels = _labels(item.get("labels"))
        pods.append(
            PodInfo(
                uid=str(item.get("uid") or f"{namespace}/{name}"),
                namespace=sys.intern(namespace),
                name=name,
                node=sys.intern(str(item.get("node") or "")),
                ips=_ips(str(ip) for ip in item.get("ips") or ()),
                labels=labels,
                workload_kind=str(workload.get("kind") or item.get("workload_kind") or "Pod"),
                workload_name=str(workload.get("name") or item.get("workload_name") or name),
                created_ns=0,
                observe=_observe(item),
            )
        )
    services = [
        ServiceInfo(
            uid=str(item.get("uid") or f"{item.get('namespace') or 'default'}/{item['name']}"),
            namespace=sys.intern(str(item.get("namespace") or "default")),
            name=sys.intern(str(item["name"])),
            ips=_ips(str(ip) for ip in item.get("ips") or ()),
            selector=_labels(item.get("selector")),
        )
        for item in data.get("services") or ()
    ]
    nodes = [
        NodeInfo(
            name=sys.intern(str(item["name"])),
            ips=_ips(str(ip) for ip in item.get("ips") or ()),
            zone=str(item.get("zone") or ""),
        )
        for item in data.get("nodes") or ()
    ]
    namespaces = [
        NamespaceInfo(name=sys.intern(str(item["name"])), labels=_labels(item.get("labels")), observe=_observe(item))
        for item in data.get("namespaces") or ()
    ]
    return {"pods": pods, "services": services, "nodes": nodes, "namespaces": namespaces}


class FileSource:
    """Feeds a :class:`K8sCache` from a YAML file and reloads it when it changes."""

    def __init__(self, cache: K8sCache, path: str | Path, poll_interval: float = 1.0) -> None:
        self.cache = cache
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamp: tuple[int, int] | None = None  # of the content loaded
        self._seen: tuple[int, int] | None = None  # at the previous poll
        self.loads = 0
        self.errors = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self.cache.expect(("pods", "services", "nodes", "namespaces"))
        self.reload_if_changed(settle=False)
        self._thread = threading.Thread(target=self._run, name="k8s-file-source", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self.reload_if_changed()
            self.cache.purge()

    def reload_if_changed(self, settle: bool = True) -> bool:
        """Load the file if it changed; with ``settle``, only once the change held for one poll."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (0, 0)
        seen, self._seen = self._seen, stamp
        if stamp == self._stamp or (settle and stamp != seen):
            return False
        self._stamp = stamp
        try:
            content = (
                load_file(self.path)
                if stamp != (0, 0)
                else {k: [] for k in ("pods", "services", "nodes", "namespaces")}
            )
        except Exception as exc:  # a half-written or malformed file: keep the previous content
            self.errors += 1
            log.warning("%s: not loaded (%s); keeping the previous content", self.path, exc)
            return False
        for kind in ("nodes", "namespaces", "services", "pods"):
            self.cache.replace(kind, content[kind])  # type: ignore[arg-type]
            self.cache.mark_synced(kind)
        self.loads += 1
        return True
