"""The k8sattributes processor: vectorised enrichment, readiness, opt-in, the emulator and real traffic."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from retina_otel.component import ComponentStatus, CreateSettings
from retina_otel.flows import FlowBatch, ip_to_bytes
from retina_otel.flowschema import (
    ENDPOINT_KIND,
    ENDPOINT_LOCAL,
    K8S_NAMESPACE,
    K8S_NODE_NAME,
    K8S_POD_LABEL_PREFIX,
    K8S_POD_NAME,
    K8S_SERVICE_NAME,
    K8S_WORKLOAD_KIND,
    K8S_WORKLOAD_NAME,
    ZONE,
    record_attributes,
)
from retina_otel.k8s import K8sCache
from retina_otel.k8s.models import NodeInfo, PodInfo, ServiceInfo
from retina_otel.processors.k8sattributes import FACTORY, K8sAttributesConfig, K8sAttributesProcessor
from retina_otel.testing import CollectingConsumer, TestHost, wait_for
from retina_otel.testing_k8s import EmulatedCluster
from tests.test_k8s_cache import RecordingFilter, namespace, node, pod, service

SETTINGS = CreateSettings("k8sattributes", "processor")


def _pod(
    name: str,
    ip: str,
    *,
    ns: str = "shop",
    node_name: str = "test-node",
    created: int = 0,
    labels: tuple[tuple[str, str], ...] = (("app", "web"),),
    uid: str | None = None,
) -> PodInfo:
    return PodInfo(
        uid=uid or f"uid-{name}",
        namespace=ns,
        name=name,
        node=node_name,
        ips=(ip_to_bytes(ip),),
        labels=labels,
        workload_kind="Deployment",
        workload_name=name.rsplit("-", 1)[0],
        created_ns=created,
        observe=False,
    )


def _batch(pairs: list[tuple[str, str]], times: list[int] | None = None) -> FlowBatch:
    batch = FlowBatch.empty(len(pairs))
    batch.records["src_ip"] = [ip_to_bytes(s) for s, _ in pairs]
    batch.records["dst_ip"] = [ip_to_bytes(d) for _, d in pairs]
    batch.records["ip_version"] = 4
    if times is not None:
        batch.records["time_start_ns"] = times
    return batch


def _processor(cache: K8sCache, **config: Any) -> tuple[K8sAttributesProcessor, CollectingConsumer, TestHost]:
    out = CollectingConsumer()
    host = TestHost()
    proc = K8sAttributesProcessor(SETTINGS, K8sAttributesConfig(**config), out, cache=cache)
    proc.start(host)
    return proc, out, host


def _side(batch: FlowBatch, i: int, side: str) -> dict[str, Any]:
    index = int(batch.records[i][f"{side}_endpoint"])
    return dict(batch.endpoints.entries[index]) if index >= 0 else {}


def test_both_sides_enriched_from_shared_cache() -> None:
    cache = K8sCache(node_name="test-node")
    cache.upsert("nodes", NodeInfo("test-node", (ip_to_bytes("198.18.0.1"),), "zone-1"))
    cache.upsert("pods", _pod("web-1", "198.18.3.1", labels=(("app", "web"), ("secret", "x"))))
    cache.upsert("pods", _pod("db-1", "198.18.3.2", node_name="node-b"))
    cache.upsert("services", ServiceInfo("s", "shop", "web", (ip_to_bytes("198.18.100.1"),), (("app", "web"),)))
    for kind in ("pods", "services", "nodes", "namespaces"):
        cache.mark_synced(kind)
    proc, out, host = _processor(cache)
    batch = _batch(
        [
            ("198.18.3.1", "198.18.3.2"),
            ("198.18.3.1", "198.18.100.1"),
            ("198.18.0.1", "203.0.113.9"),
            ("198.18.9.9", "198.18.3.1"),
        ]
    )
    proc.consume_flows(batch)
    assert out.batches == [batch]
    src = _side(batch, 0, "src")
    assert src[K8S_POD_NAME] == "web-1" and src[K8S_NAMESPACE] == "shop"
    assert (src[K8S_WORKLOAD_KIND], src[K8S_WORKLOAD_NAME]) == ("Deployment", "web")
    assert src[K8S_SERVICE_NAME] == "web" and src[ZONE] == "zone-1" and src[ENDPOINT_LOCAL] is True
    assert src[K8S_POD_LABEL_PREFIX + "app"] == "web" and K8S_POD_LABEL_PREFIX + "secret" not in src
    dst = _side(batch, 0, "dst")
    assert dst[K8S_POD_NAME] == "db-1" and dst[ENDPOINT_LOCAL] is False
    assert _side(batch, 1, "dst")[ENDPOINT_KIND] == "service"
    assert _side(batch, 2, "src") == {
        K8S_NODE_NAME: "test-node",
        ZONE: "zone-1",
        ENDPOINT_KIND: "node",
        ENDPOINT_LOCAL: True,
    }
    assert int(batch.records[2]["dst_endpoint"]) == -1 and int(batch.records[3]["src_endpoint"]) == -1
    assert batch.attributes["k8s.node.name"] == "test-node"
    attrs = record_attributes(batch, 0)
    assert attrs["source.k8s.pod.name"] == "web-1" and attrs["destination.k8s.pod.name"] == "db-1"
    assert (SETTINGS.id, ComponentStatus.OK, "synced") in host.statuses or wait_for(
        lambda: any(s[1] == ComponentStatus.OK for s in host.statuses)
    )
    proc.shutdown()
    proc.shutdown()


def test_ip_reuse_and_grace_by_flow_time() -> None:
    now = time.time_ns()
    cache = K8sCache(grace_period=30)
    cache.upsert("pods", _pod("old-1", "198.18.3.5", created=now - 100 * 10**9, uid="u-old"))
    cache.delete("pods", cache.pod_by_uid("u-old"))  # type: ignore[arg-type]
    deleted = cache.claims(ip_to_bytes("198.18.3.5"))[0].end_ns
    cache.upsert("pods", _pod("new-1", "198.18.3.5", created=deleted + 10**9, uid="u-new"))
    cache.upsert("pods", _pod("gone-1", "198.18.3.6", created=now - 100 * 10**9, uid="u-gone"))
    cache.delete("pods", cache.pod_by_uid("u-gone"))  # type: ignore[arg-type]
    proc, _, _ = _processor(cache, wait_for_sync=False)
    times = [deleted - 10**9, deleted + 2 * 10**9, deleted + 10**9 // 2, deleted + 10 * 10**9, deleted + 60 * 10**9]
    batch = _batch([("198.18.3.5", "198.18.3.9")] * 3 + [("198.18.3.6", "198.18.3.9")] * 2, times)
    proc.consume_flows(batch)
    names = [_side(batch, i, "src").get(K8S_POD_NAME) for i in range(5)]
    assert names == ["old-1", "new-1", "old-1", "gone-1", None]
    proc.shutdown()


def test_table_follows_cache_changes_and_label_allow_list() -> None:
    cache = K8sCache()
    cache.upsert("pods", _pod("web-1", "198.18.3.1"))
    proc, _, _ = _processor(cache, wait_for_sync=False, pod_labels=["tier"])
    batch = _batch([("198.18.3.1", "198.18.3.2")])
    proc.consume_flows(batch)
    assert _side(batch, 0, "dst") == {} and K8S_POD_LABEL_PREFIX + "app" not in _side(batch, 0, "src")
    cache.upsert("pods", _pod("db-1", "198.18.3.2", labels=(("tier", "data"),)))
    batch = _batch([("198.18.3.1", "198.18.3.2")])
    proc.consume_flows(batch)
    assert _side(batch, 0, "dst")[K8S_POD_LABEL_PREFIX + "tier"] == "data"
    builds = proc.table_builds
    proc.consume_flows(_batch([("198.18.3.1", "198.18.3.2")]))
    assert proc.table_builds == builds, "no rebuild without a cache change"
    proc.shutdown()


def test_config_is_frozen_and_validated() -> None:
    config = FACTORY.default_config()
    assert config.source == "kubernetes" and "app" in config.pod_labels and config.grace_period == 60
    with pytest.raises(ValidationError):
        config.grace_period = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        K8sAttributesConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        K8sAttributesConfig(source="file")
    with pytest.raises(ValidationError):
        K8sAttributesConfig(namespaces_include=["a"], namespaces_exclude=["b"])


def _k8s_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith(("k8s-", "k8sattributes"))}


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as c:
        yield c


def test_own_cache_against_emulator_readiness_and_ip_filter(cluster: EmulatedCluster) -> None:
    before = _k8s_threads()
    cluster.create("namespaces", namespace("shop", {"retina.sh": "observe"}))
    cluster.create("nodes", node("test-node", "198.18.0.1"))
    cluster.create(
        "pods",
        pod(
            "web-5d4f8c-x1",
            "198.18.3.1",
            node="test-node",
            labels={"app": "web", "pod-template-hash": "5d4f8c"},
            owner=("ReplicaSet", "web-5d4f8c"),
        ),
    )
    cluster.create("services", service("web", "198.18.100.1", selector={"app": "web"}))
    target = RecordingFilter()
    host = TestHost(node_name="test-node", extensions={"ip_filter": target})
    proc = FACTORY.create(
        SETTINGS,
        K8sAttributesConfig(api_url=cluster.url, enable_annotations=True, backoff_base=0.05),
        CollectingConsumer(),
    )
    assert isinstance(proc, K8sAttributesProcessor)
    proc.start(host)
    try:
        assert host.statuses[0][1] == ComponentStatus.STARTING
        assert wait_for(lambda: host.statuses[-1][1] == ComponentStatus.OK)
        assert target.ips == {"198.18.3.1"}
        batch = _batch([("198.18.3.1", "198.18.100.1")])
        proc.consume_flows(batch)
        src = _side(batch, 0, "src")
        assert (src[K8S_POD_NAME], src[K8S_WORKLOAD_NAME], src[K8S_SERVICE_NAME]) == ("web-5d4f8c-x1", "web", "web")
        cluster.create("pods", pod("web-5d4f8c-x2", "198.18.3.2", node="test-node", labels={"app": "web"}))
        assert wait_for(lambda: target.ips == {"198.18.3.1", "198.18.3.2"})
        cluster.delete("pods", "shop", "web-5d4f8c-x1")
        assert wait_for(lambda: target.ips == {"198.18.3.2"})
    finally:
        proc.shutdown()
    assert wait_for(lambda: _k8s_threads() <= before, timeout=5), _k8s_threads() - before


def test_sync_timeout_reports_failed() -> None:
    host = TestHost()
    proc = FACTORY.create(
        SETTINGS,
        K8sAttributesConfig(api_url="http://127.0.0.1:9", sync_timeout=0.2, backoff_base=0.05, backoff_max=0.1),
        None,
    )
    proc.start(host)
    try:
        assert wait_for(lambda: any(s[1] == ComponentStatus.FAILED for s in host.statuses), timeout=5)
        proc.consume_flows(_batch([("198.18.3.1", "198.18.3.2")]))  # passes through unenriched
    finally:
        proc.shutdown()


def test_file_source_processor(tmp_path: Any) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(
        "endpoints: [{name: web-1, namespace: shop, ips: [198.18.3.7], labels: {app: web},"
        " workload: {kind: Deployment, name: web}, node: test-node}]\n"
    )
    proc = FACTORY.create(
        SETTINGS, K8sAttributesConfig(source="file", file_path=str(path), file_poll_interval=0.05), None
    )
    host = TestHost()
    proc.start(host)
    try:
        assert wait_for(lambda: host.statuses[-1][1] == ComponentStatus.OK)
        batch = _batch([("198.18.3.7", "198.18.3.8")])
        proc.consume_flows(batch)  # type: ignore[attr-defined]
        assert _side(batch, 0, "src")[K8S_WORKLOAD_NAME] == "web"
    finally:
        proc.shutdown()


def test_enrichment_of_a_large_batch() -> None:
    """100K rows over 5K addresses, 4K of them pods: four in five endpoints enriched. (The cost per record
    is measured in benchmarks/bench_k8sattributes.py, not asserted here.)"""
    cache = K8sCache()
    rng = np.random.default_rng(7)
    ips = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(5000)]
    for i, ip in enumerate(ips[:4000]):
        cache.upsert("pods", _pod(f"p-{i}", ip))
    proc, _, _ = _processor(cache, wait_for_sync=False)
    n = 100_000
    pool = np.array([ip_to_bytes(ip) for ip in ips], dtype="V16")
    batch = FlowBatch.empty(n)
    batch.records["src_ip"] = pool[rng.integers(0, len(ips), n)]
    batch.records["dst_ip"] = pool[rng.integers(0, len(ips), n)]
    proc.consume_flows(batch)  # builds the table
    proc.consume_flows(batch)
    assert (batch.records["src_endpoint"] >= 0).mean() == pytest.approx(0.8, abs=0.02)
    proc.shutdown()


@pytest.mark.kernel
def test_end_to_end_real_traffic(cluster: EmulatedCluster, sandbox: Any) -> None:
    """Sandbox pods whose IPs are pods in the emulator; packetparser -> k8sattributes -> consumer."""
    from retina_otel.receivers.packetparser import FACTORY as PP_FACTORY

    client = sandbox.add_pod("client")
    server = sandbox.add_pod("server")
    cluster.create(
        "pods",
        pod(
            "client-6b7d9c-aaaaa",
            client.ipv4,
            ns="shop",
            node="test-node",
            labels={"app": "client", "pod-template-hash": "6b7d9c"},
            owner=("ReplicaSet", "client-6b7d9c"),
        ),
    )
    cluster.create(
        "pods",
        pod(
            "server-0",
            server.ipv4,
            ns="db",
            node="test-node",
            labels={"app": "server"},
            owner=("StatefulSet", "server"),
        ),
    )
    host = TestHost(node_name="test-node")
    out = CollectingConsumer()
    k8s = FACTORY.create(SETTINGS, K8sAttributesConfig(api_url=cluster.url, backoff_base=0.05), out)
    pp_config = PP_FACTORY.config_model(
        host_interface="none", interfaces=(f"ro{sandbox.token}*",), report_interval=1.0, batch_interval=0.2
    )
    receiver = PP_FACTORY.create(CreateSettings("packetparser", "receiver"), pp_config, k8s)  # type: ignore[arg-type]
    k8s.start(host)
    try:
        assert wait_for(lambda: any(s[1] == ComponentStatus.OK for s in host.statuses if s[0] == SETTINGS.id))
        receiver.start(host)
        with server.entered():
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((server.ipv4, 8080))
            listener.listen()
        try:
            conn = None
            for _attempt in range(20):  # the routes of a fresh sandbox may need a moment
                try:
                    with client.entered():
                        conn = socket.create_connection((server.ipv4, 8080), timeout=2)
                    break
                except OSError:
                    time.sleep(0.2)
            assert conn is not None, "no connection between the sandbox pods"
            peer, _ = listener.accept()
            conn.sendall(b"x" * 1000)
            peer.recv(2000)
            conn.close()
            peer.close()
        finally:
            listener.close()

        def found() -> bool:
            for batch in list(out.batches):
                for i in range(len(batch)):
                    attrs = record_attributes(batch, i)
                    if (
                        attrs.get("source.k8s.pod.name") == "client-6b7d9c-aaaaa"
                        and attrs.get("destination.k8s.pod.name") == "server-0"
                    ):
                        assert attrs["source.k8s.workload.name"] == "client"
                        assert attrs["destination.k8s.workload.kind"] == "StatefulSet"
                        assert attrs["destination.k8s.namespace.name"] == "db"
                        return True
            return False

        assert wait_for(found, timeout=15), "no flow record with both sides' metadata"
    finally:
        receiver.shutdown()
        k8s.shutdown()


def test_rate_limited_rebuild_overlay_tracks_reuse_and_deletion() -> None:
    now = time.time_ns()
    cache = K8sCache(grace_period=0)
    cache.upsert("pods", _pod("a-1", "198.18.4.1", created=now - 10**10, uid="ua"))
    cache.upsert("pods", _pod("b-1", "198.18.4.2", created=now - 10**10, uid="ub"))
    proc, _, _ = _processor(cache, wait_for_sync=False)
    proc.MIN_REBUILD_INTERVAL = 3600  # type: ignore[misc]
    proc.consume_flows(_batch([("198.18.4.1", "198.18.4.2")]))
    builds = proc.table_builds
    cache.delete("pods", cache.pod_by_uid("ua"))  # type: ignore[arg-type]
    cache.upsert("pods", _pod("c-1", "198.18.4.1", created=time.time_ns(), uid="uc"))  # reuses a-1's IP
    cache.delete("pods", cache.pod_by_uid("ub"))  # type: ignore[arg-type]
    cache.upsert("pods", _pod("d-1", "198.18.4.3", uid="ud"))
    later = time.time_ns() + 10**9
    batch = _batch([("198.18.4.1", "198.18.4.2"), ("198.18.4.3", "198.18.4.1")], [later, later])
    proc.consume_flows(batch)
    assert proc.table_builds == builds, "rebuild was rate-limited"
    assert _side(batch, 0, "src")[K8S_POD_NAME] == "c-1"
    assert _side(batch, 0, "dst") == {}, "deleted pod past its grace period"
    assert _side(batch, 1, "src")[K8S_POD_NAME] == "d-1"
    proc.shutdown()
