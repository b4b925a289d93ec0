"""The k8sattributes processor: both endpoints' Kubernetes metadata on every flow record, vectorised.

Per batch there is no per-record Python: the 16-byte addresses of both columns are hashed to uint64
(with the full address kept alongside to verify hits), looked up with one ``np.searchsorted`` into a
sorted table of every address the cache knows, and the table's entry indices written into
``src_endpoint``/``dst_endpoint``. The table is rebuilt only when the cache's generation changed
(entries themselves are cached per object version). Addresses whose pod history matters (a reused IP,
a deleted pod within its grace period) carry a negative code; only their rows are resolved by time,
again vectorised per address.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from retina_otel.component import ComponentStatus, CreateSettings, FlowConsumer, Host
from retina_otel.extension_keys import IP_FILTER, K8S_CACHE
from retina_otel.extensions import ExtensionKey
from retina_otel.flows import EndpointTable, FlowBatch, bytes_to_ip
from retina_otel.flowschema import (
    ENDPOINT_KIND,
    ENDPOINT_LOCAL,
    K8S_NAMESPACE,
    K8S_NODE_NAME,
    K8S_POD_LABEL_PREFIX,
    K8S_POD_NAME,
    K8S_POD_UID,
    K8S_SERVICE_NAME,
    K8S_WORKLOAD_KIND,
    K8S_WORKLOAD_NAME,
    ZONE,
)
from retina_otel.k8s import CacheService, K8sCache, PodSelection, RefCountedIpSet
from retina_otel.k8s.models import NodeInfo, PodInfo, ServiceInfo
from retina_otel.processors.k8sattributes.config import K8sAttributesConfig

if TYPE_CHECKING:
    from retina_otel.k8s.watch import ClientSettings

__all__ = ["K8sAttributesProcessor", "LookupTable", "build_cache_service"]

log = logging.getLogger(__name__)

_MIX = np.uint64(0x9E3779B97F4A7C15)
_NO_LIMIT = np.iinfo(np.int64).max
RESOURCE_NODE_ATTRIBUTE = "k8s.node.name"


def client_settings(config: K8sAttributesConfig) -> ClientSettings:
    """The API connection settings of a ``source: kubernetes`` config (a ClientSettings)."""
    from retina_otel.k8s.watch import ClientSettings

    return ClientSettings(
        api_url=config.api_url,
        kubeconfig=config.kubeconfig,
        context=config.context,
        insecure_skip_tls_verify=config.insecure_skip_tls_verify,
    )


def build_cache_service(config: K8sAttributesConfig, node_name: str, on_error: Any = None) -> CacheService:
    """The cache and source the config describes (no I/O until ``start``)."""
    local_only = not config.remote_context
    cache = K8sCache(
        node_name=node_name,
        local_only=local_only and config.source == "kubernetes",
        grace_period=config.grace_period,
        history=config.ip_history,
    )
    if config.source == "file":
        from retina_otel.k8s.filesource import FileSource

        return CacheService(cache, FileSource(cache, config.file_path, config.file_poll_interval))
    from retina_otel.k8s.watch import ApiSource, WatchPlan

    settings = client_settings(config)
    plan = WatchPlan(
        pods=True,
        services=config.watch_services,
        nodes=config.watch_nodes,
        namespaces=config.watch_namespaces,
        retina_endpoints=config.remote_context and config.use_retina_endpoints,
        local_node=node_name if local_only else "",
    )
    source = ApiSource(
        cache,
        settings,
        plan,
        watch_timeout=config.watch_timeout,
        backoff_base=config.backoff_base,
        backoff_max=config.backoff_max,
        on_error=on_error,
    )
    return CacheService(cache, source)


@dataclass(frozen=True)
class _Timed:
    starts: npt.NDArray[np.int64]
    limits: npt.NDArray[np.int64]  # end + grace, or "never" for the live claim
    codes: npt.NDArray[np.int32]
    fallback: int


class LookupTable:
    """Every known address of one cache generation, sorted by a 64-bit hash, with its entry code."""

    def __init__(self, entry_of: Any, cache: K8sCache, only: list[bytes] | None = None, base: int = 0) -> None:
        """All addresses of the cache, or (``only``) an overlay of just these addresses, including ones
        the cache no longer knows (code -1), whose entry indices start at ``base``."""
        claims_idx, services_idx, nodes_idx = cache.ip_index()
        if only is not None:
            wanted = set(only)
            claims_idx = {ip: c for ip in wanted if (c := claims_idx.get(ip))}
            services_idx = {ip: sv for ip in wanted if (sv := services_idx.get(ip)) is not None}
            nodes_idx = {ip: nd for ip in wanted if (nd := nodes_idx.get(ip)) is not None}
        self.entries: list[Mapping[str, Any]] = []
        index: dict[int, int] = {}
        keep_alive: list[object] = []  # ids stay unique while the objects live

        def code(obj: PodInfo | ServiceInfo | NodeInfo) -> int:
            found = index.get(id(obj))
            if found is None:
                found = base + len(self.entries)
                self.entries.append(entry_of(obj))
                index[id(obj)] = found
                keep_alive.append(obj)
            return found

        ips: list[bytes] = []
        codes: list[int] = []
        self.timed: list[_Timed] = []
        grace = cache.grace_ns
        for ip, svc in list(services_idx.items()):
            if ip not in claims_idx:
                ips.append(ip)
                codes.append(code(svc))
        for ip, node in list(nodes_idx.items()):
            if ip not in claims_idx and ip not in services_idx:
                ips.append(ip)
                codes.append(code(node))
        for ip, claims in list(claims_idx.items()):
            if not claims:
                continue
            if len(claims) == 1 and claims[0].end_ns == 0:
                ips.append(ip)
                codes.append(code(claims[0].pod))
                continue
            other = services_idx.get(ip) or nodes_idx.get(ip)
            self.timed.append(
                _Timed(
                    starts=np.array([c.start_ns for c in claims], dtype=np.int64),
                    limits=np.array([c.end_ns + grace if c.end_ns else _NO_LIMIT for c in claims], dtype=np.int64),
                    codes=np.array([code(c.pod) for c in claims], dtype=np.int32),
                    fallback=code(other) if other is not None else -1,
                )
            )
            ips.append(ip)
            codes.append(-2 - (len(self.timed) - 1))
        if only is not None:
            for ip in set(only) - set(claims_idx) - set(services_idx) - set(nodes_idx):
                ips.append(ip)
                codes.append(-1)  # gone: the overlay must hide the stale base entry
        raw = np.frombuffer(b"".join(ips), dtype="<u8").reshape(-1, 2) if ips else np.zeros((0, 2), "<u8")
        keys = (raw[:, 0] * _MIX) ^ raw[:, 1]
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.hi = raw[order, 0].copy()
        self.lo = raw[order, 1].copy()
        self.codes = np.asarray(codes, dtype=np.int32)[order]
        self.table = EndpointTable(entries=tuple(self.entries))

    def resolve(
        self, raw16: npt.NDArray[np.void], times: npt.NDArray[np.int64] | None, hits: list[Any] | None = None
    ) -> npt.NDArray[np.int32]:
        """Entry index per 16-byte address (``-1`` unknown); ``times`` (unix ns) for reused addresses.
        ``hits``, when given, receives the boolean mask of addresses present in the table."""
        n = raw16.shape[0]
        if n == 0 or self.keys.shape[0] == 0:
            if hits is not None:
                hits.append(np.zeros(n, dtype=bool))
            return np.full(n, -1, dtype=np.int32)
        words = np.ascontiguousarray(raw16).view("<u8").reshape(-1, 2)
        hi = words[:, 0]
        lo = words[:, 1]
        keys = (hi * _MIX) ^ lo
        pos = np.searchsorted(self.keys, keys)
        np.minimum(pos, self.keys.shape[0] - 1, out=pos)
        hit = (self.keys[pos] == keys) & (self.hi[pos] == hi) & (self.lo[pos] == lo)
        out = np.where(hit, self.codes[pos], np.int32(-1)).astype(np.int32, copy=False)
        if hits is not None:
            hits.append(hit)
        if self.timed:
            timed_rows = np.nonzero(out <= -2)[0]
            if timed_rows.size:
                t = times[timed_rows] if times is not None else np.full(timed_rows.size, time.time_ns(), np.int64)
                which = out[timed_rows]
                for code in np.unique(which):
                    sel = which == code
                    rows = timed_rows[sel]
                    info = self.timed[-2 - int(code)]
                    tt = t[sel]
                    ci = np.searchsorted(info.starts, tt, side="right") - 1
                    np.maximum(ci, 0, out=ci)
                    out[rows] = np.where(tt <= info.limits[ci], info.codes[ci], np.int32(info.fallback))
        return out


class PodDeletionListener(Protocol):
    def __call__(self, pods: list[str], *, delay_seconds: float | None = None) -> object: ...


class K8sAttributesProcessor:
    def __init__(
        self,
        settings: CreateSettings,
        config: K8sAttributesConfig,
        next_consumer: FlowConsumer | None,
        *,
        cache: K8sCache | None = None,
    ) -> None:
        """``cache``: a cache filled by someone else (tests, benchmarks), used instead of building one from
        the config's source; its lifecycle stays with the caller."""
        self.settings = settings
        self.config = config
        self.next_consumer = next_consumer
        self.cache: K8sCache | None = cache
        self._given_cache = cache
        self.selection: PodSelection | None = None
        self.ipset: RefCountedIpSet | None = None
        self._own_service: CacheService | None = None
        self._pending_namespace_filter: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._deletion_listeners: list[PodDeletionListener] = []
        self._host: Host | None = None
        self._node = ""
        self._label_keys = tuple(config.pod_labels)
        self._table: LookupTable | None = None
        self._table_gen = -1
        self._table_built = 0.0
        self._build_seconds = 0.0
        self._meta_gen = -1
        self._entry_cache: dict[int, tuple[object, Mapping[str, Any]]] = {}
        self._table_lock = threading.Lock()
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None
        self._started = False
        self.table_builds = 0

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self, host: Host) -> None:
        if self._started:
            return
        self._started = True
        self._stop.clear()
        self._host = host
        self._node = self.config.node_name or host.node_name
        shared = host.get_extension(K8S_CACHE)
        if shared is not None and shared is not self and shared.cache is not None:
            # The same processor id in another pipeline: one cache, one watch, one IP filter selection.
            self.cache = shared.cache
            host.report_status(self.settings.id, ComponentStatus.OK, "shares the cache of its first pipeline")
            return
        if self._given_cache is not None:
            self.cache = self._given_cache
        else:

            def on_error(resource: str, reason: str) -> None:
                host.count_lost("k8s_watch", f"{resource}:{reason}", 1)

            self._own_service = build_cache_service(self.config, self._node, on_error)
            self.cache = self._own_service.cache
        self.ipset = RefCountedIpSet(host.get_extension(IP_FILTER))
        self.selection = PodSelection(
            self.cache,
            self.ipset,
            enable_annotations=self.config.enable_annotations,
            include=self.config.namespaces_include,
            exclude=self.config.namespaces_exclude,
        )
        self.selection.attach()
        if self._pending_namespace_filter is not None:
            include, exclude = self._pending_namespace_filter
            self.selection.set_namespace_filter(include=include, exclude=exclude)
        self.cache.add_listener(self._on_cache_change)
        if self.config.wait_for_sync:
            host.report_status(self.settings.id, ComponentStatus.STARTING, "waiting for the first full sync")
        if self._own_service is not None:
            self._own_service.start()
        if self.config.wait_for_sync:
            self._status_thread = threading.Thread(target=self._await_sync, name="k8sattributes-sync", daemon=True)
            self._status_thread.start()
        else:
            host.report_status(self.settings.id, ComponentStatus.OK)

    def _await_sync(self) -> None:
        cache, host = self.cache, self._host
        assert cache is not None and host is not None
        deadline = time.monotonic() + self.config.sync_timeout
        reported_late = False
        while not self._stop.is_set():
            if cache.wait_synced(0.1):
                host.report_status(self.settings.id, ComponentStatus.OK, "synced")
                return
            if not reported_late and time.monotonic() > deadline:
                reported_late = True
                host.report_status(
                    self.settings.id,
                    ComponentStatus.FAILED,
                    f"no full sync within {self.config.sync_timeout:g}s; still trying, enrichment partial",
                )

    def shutdown(self) -> None:
        self._stop.set()
        if self._status_thread is not None:
            self._status_thread.join(5)
            self._status_thread = None
        if self.selection is not None:
            self.selection.detach()
        if self.cache is not None:
            self.cache.remove_listener(self._on_cache_change)
        if self._own_service is not None:
            self._own_service.shutdown()
        self._started = False

    # -- control -------------------------------------------------------------------------------------------

    def extensions(self) -> dict[ExtensionKey[Any] | str, object]:
        """What this processor offers the agent's other components: itself as ``k8s_cache`` (namespace
        filter and pod-deletion notices for flowmetrics). The first pipeline's instance is the one
        registered; the others share its cache."""
        return {K8S_CACHE: self}

    def api_settings(self) -> ClientSettings | None:
        """The :class:`~retina_otel.k8s.watch.ClientSettings` this processor watches the API server with,
        or None when its metadata comes from a file (other components watch with the same settings)."""
        return client_settings(self.config) if self.config.source == "kubernetes" else None

    def set_namespace_filter(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        """Namespace include/exclude from the accepted MetricsConfiguration (without annotations).
        Before start, the filter is kept and applied when the processor starts."""
        if self.selection is None:
            self._pending_namespace_filter = (tuple(include), tuple(exclude))
            return
        self.selection.set_namespace_filter(include=include, exclude=exclude)

    def add_pod_deletion_listener(self, listener: PodDeletionListener) -> None:
        """``listener(["<namespace>/<name>", *ips], delay_seconds=grace_period)`` for every deleted pod, plus
        the bare name when no live pod of another namespace has it: metrics of a pod go when its
        enrichment grace period ends, so late flows still find both."""
        self._deletion_listeners.append(listener)

    def _on_cache_change(self, kind: str, old: object, new: object) -> None:
        if kind != "pods" or new is not None or not isinstance(old, PodInfo):
            return
        forget = [f"{old.namespace}/{old.name}", *(str(bytes_to_ip(ip)) for ip in old.ips)]
        cache = self.cache
        if cache is not None and not any(p.name == old.name for p in cache.pods()):
            # No live pod of that name in another namespace: series labelled by podname alone (no
            # namespace label) are this pod's only, and go too.
            forget.append(old.name)
        for listener in list(self._deletion_listeners):
            try:
                listener(forget, delay_seconds=self.config.grace_period)
            except Exception:
                log.exception("pod deletion listener failed")

    # -- entries ---------------------------------------------------------------------------------------------

    def _entry(self, obj: PodInfo | ServiceInfo | NodeInfo) -> Mapping[str, Any]:
        cached = self._entry_cache.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1]
        cache = self.cache
        assert cache is not None
        entry: dict[str, Any]
        if isinstance(obj, PodInfo):
            services = cache.services_of(obj)
            entry = {
                K8S_NAMESPACE: obj.namespace,
                K8S_POD_NAME: obj.name,
                K8S_POD_UID: obj.uid,
                K8S_NODE_NAME: obj.node,
                K8S_WORKLOAD_KIND: obj.workload_kind,
                K8S_WORKLOAD_NAME: obj.workload_name,
                K8S_SERVICE_NAME: services[0].name if services else "",
                ZONE: cache.zone_of(obj.node),
                ENDPOINT_KIND: "pod",
                ENDPOINT_LOCAL: bool(obj.node) and obj.node == self._node,
            }
            labels = dict(obj.labels)
            for key in self._label_keys:
                value = labels.get(key)
                if value is not None:
                    entry[K8S_POD_LABEL_PREFIX + key] = value
        elif isinstance(obj, ServiceInfo):
            entry = {
                K8S_NAMESPACE: obj.namespace,
                K8S_SERVICE_NAME: obj.name,
                ENDPOINT_KIND: "service",
                ENDPOINT_LOCAL: False,
            }
        else:
            entry = {
                K8S_NODE_NAME: obj.name,
                ZONE: obj.zone,
                ENDPOINT_KIND: "node",
                ENDPOINT_LOCAL: obj.name == self._node,
            }
        frozen = MappingProxyType(entry)
        self._entry_cache[id(obj)] = (obj, frozen)
        return frozen

    MIN_REBUILD_INTERVAL = 0.5
    """Seconds between full table rebuilds under churn (more when a build is slow: 20x its CPU time).
    In between, the addresses changed since the build are resolved by a small overlay table."""

    def lookup_table(self, force: bool = False) -> LookupTable:
        """The table of the cache's current generation (rebuilt when the cache changed, at most every
        :attr:`MIN_REBUILD_INTERVAL` seconds unless ``force``)."""
        cache = self.cache
        if cache is None:
            raise RuntimeError("k8sattributes is not started")
        with self._table_lock:
            generation = cache.generation
            interval = max(self.MIN_REBUILD_INTERVAL, 20 * self._build_seconds)  # <= 5% of a core
            fresh_enough = time.monotonic() - self._table_built < interval and not force
            if self._table is None or (generation != self._table_gen and not fresh_enough):
                if cache.meta_generation != self._meta_gen or len(self._entry_cache) > 4 * len(cache.pods()) + 10_000:
                    self._entry_cache.clear()
                    self._meta_gen = cache.meta_generation
                began = time.thread_time()
                self._table = LookupTable(self._entry, cache)
                self._build_seconds = time.thread_time() - began
                self._table_gen = generation
                self._table_built = time.monotonic()
                self.table_builds += 1
            return self._table

    # -- data path -------------------------------------------------------------------------------------------

    def consume_flows(self, batch: FlowBatch) -> None:
        if self.cache is not None:
            self.enrich(batch)
        if self.next_consumer is not None:
            self.next_consumer.consume_flows(batch)

    def enrich(self, batch: FlowBatch) -> None:
        table = self.lookup_table()
        records = batch.records
        n = records.shape[0]
        if self._node:
            batch.attributes[RESOURCE_NODE_ATTRIBUTE] = self._node
        if n == 0:
            batch.endpoints = table.table
            return
        times: npt.NDArray[np.int64] | None = None
        if table.timed or self._table_gen != self.cache.generation:  # type: ignore[union-attr]
            start = records["time_start_ns"].astype(np.int64)
            end = records["time_end_ns"].astype(np.int64)
            t = np.where(start > 0, start, end)
            t = np.where(t > 0, t, np.int64(time.time_ns()))
            times = np.concatenate((t, t))
        addresses = np.concatenate((records["src_ip"], records["dst_ip"]))
        codes = table.resolve(addresses, times)
        endpoints = table.table
        if self.cache is not None and self._table_gen != self.cache.generation:
            endpoints = self._overlay(addresses, codes, table, times)
        records["src_endpoint"] = codes[:n]
        records["dst_endpoint"] = codes[n:]
        batch.endpoints = endpoints

    def _overlay(
        self,
        addresses: npt.NDArray[np.void],
        codes: npt.NDArray[np.int32],
        table: LookupTable,
        times: npt.NDArray[np.int64] | None,
    ) -> EndpointTable:
        """The table is older than the cache (rebuilds are rate-limited): resolve the addresses that
        changed since it was built with a small overlay table, whose entries are appended."""
        cache = self.cache
        assert cache is not None
        changed = cache.changed_since(self._table_gen)
        if changed is None:  # more changes than the cache remembers: rebuild now, whatever the rate limit
            rebuilt = self.lookup_table(force=True)
            codes[:] = rebuilt.resolve(addresses, times)
            return rebuilt.table
        if not changed:
            return table.table
        overlay = LookupTable(self._entry, cache, only=changed, base=len(table.entries))
        hits: list[Any] = []
        over = overlay.resolve(addresses, times, hits)
        mask = hits[0]
        codes[mask] = over[mask]
        if not overlay.entries:
            return table.table
        return EndpointTable(entries=(*table.table.entries, *overlay.entries))
