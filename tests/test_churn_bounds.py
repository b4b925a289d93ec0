"""Memory stays flat under churn: the k8s cache's log of changed addresses and the DNS receiver's
interface-name cache are bounded, and what relies on them still answers right."""

from __future__ import annotations

import tracemalloc

import numpy as np

from retina_otel.flows import FlowBatch, ip_to_bytes
from retina_otel.k8s import K8sCache
from retina_otel.receivers.dns.socket_source import IfindexCache
from tests.test_k8sattributes import _pod, _processor


def _ip(i: int) -> str:
    return f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255}"


def _churn(cache: K8sCache, start: int, n: int) -> None:
    for i in range(start, start + n):
        pod = _pod(f"p-{i}", _ip(i), uid=f"u-{i}")
        cache.upsert("pods", pod)
        cache.delete("pods", pod)
    cache.purge()


def _small_cache(limit: int = 2000) -> K8sCache:
    cache = K8sCache(grace_period=0)
    cache.MAX_IP_CHANGES = limit  # the bound's logic, at a size a test churns through quickly
    return cache


def test_changed_addresses_are_bounded_under_pod_churn() -> None:
    cache = _small_cache()
    limit = cache.MAX_IP_CHANGES
    _churn(cache, 0, 2000)
    tracemalloc.start()
    try:
        _churn(cache, 2000, limit)
        first, _ = tracemalloc.get_traced_memory()
        for phase in range(1, 5):  # as many pods again, four times
            _churn(cache, 2000 + phase * limit, limit)
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache.ip_changes) <= limit
    assert second - first < 0.4 * first, (first, second)  # flat; unbounded: 4 x 2000 more entries, ~1 MB
    assert cache.changed_since(0) is None  # that old: the caller must rebuild
    recent = cache.generation
    _churn(cache, 10 * limit, 3)
    expected = sorted(ip_to_bytes(_ip(i)) for i in range(10 * limit, 10 * limit + 3))
    assert sorted(cache.changed_since(recent) or []) == expected


def test_enrichment_after_more_changes_than_remembered() -> None:
    """k8sattributes' table is older than every remembered change: it rebuilds and still resolves."""
    cache = _small_cache()
    proc, _out, _host = _processor(cache, wait_for_sync=False)
    try:
        batch = FlowBatch.empty(1)
        proc.consume_flows(batch)  # builds its table at this generation
        _churn(cache, 0, cache.MAX_IP_CHANGES + 10)
        cache.upsert("pods", _pod("web-9", "198.18.250.9", uid="u-web-9"))
        assert cache.changed_since(proc._table_gen) is None
        batch = FlowBatch.empty(1)
        batch.records["src_ip"] = np.void(ip_to_bytes("198.18.250.9"))
        proc.consume_flows(batch)
        entry = batch.endpoints.entries[int(batch.records["src_endpoint"][0])]
        assert entry["k8s.pod.name"] == "web-9"
    finally:
        proc.shutdown()


def test_ifindex_cache_is_bounded_under_veth_churn() -> None:
    now = [0.0]
    cache = IfindexCache(max_entries=100, ttl=30.0, clock=lambda: now[0])
    assert cache.index("lo") == 1
    for i in range(10_000):
        cache.index(f"rotel-gone-{i}")  # names of links that came and went: index 0
        now[0] += 0.001
        assert len(cache) <= 100
    now[0] += 31
    assert cache.index("lo") == 1 and len(cache) <= 100  # re-resolved after its ttl
