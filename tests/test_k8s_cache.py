"""The watch cache against kmock's KubernetesEmulator over HTTP, with the real kubernetes client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.k8s import CacheService, K8sCache, PodSelection, RefCountedIpSet
from retina_otel.k8s.filesource import FileSource
from retina_otel.k8s.models import PodInfo, workload_of
from retina_otel.k8s.watch import ApiSource, ClientSettings, WatchPlan
from retina_otel.testing import wait_for
from retina_otel.testing_k8s import EmulatedCluster

NODE = "node-a"


def pod(
    name: str,
    ip: str | None,
    *,
    ns: str = "shop",
    node: str = NODE,
    uid: str | None = None,
    labels: dict[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    host_network: bool = False,
    created: str = "2024-01-01T00:00:00Z",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "uid": uid or f"uid-{ns}-{name}",
        "labels": labels or {},
        "creationTimestamp": created,
    }
    if annotations:
        meta["annotations"] = annotations
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "uid": "o", "controller": True}
        ]
    status: dict[str, Any] = {}
    if ip:
        status = {"podIP": ip, "podIPs": [{"ip": ip}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": node, "hostNetwork": host_network},
        "status": status,
    }


def service(
    name: str,
    ip: str,
    *,
    ns: str = "shop",
    selector: dict[str, str] | None = None,
    external: list[str] | None = None,
    lb: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": ip, "clusterIPs": [ip], "selector": selector or {}}
    if external:
        spec["externalIPs"] = external
    status = {"loadBalancer": {"ingress": [{"ip": lb}]}} if lb else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": f"svc-{name}"},
        "spec": spec,
        "status": status,
    }


def node(name: str, ip: str, zone: str = "zone-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    }


def namespace(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations or {}}}


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as c:
        yield c


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("k8s-")}


@pytest.fixture
def make_source(cluster: EmulatedCluster) -> Iterator[Any]:
    made: list[ApiSource] = []
    before = _threads()

    def make(*, local: bool = True, grace: float = 60.0, retina_endpoints: bool = False) -> tuple[K8sCache, ApiSource]:
        cache = K8sCache(node_name=NODE, local_only=local, grace_period=grace)
        plan = WatchPlan(local_node=NODE if local else "", retina_endpoints=retina_endpoints)
        source = ApiSource(
            cache, ClientSettings(api_url=cluster.url), plan, watch_timeout=30, backoff_base=0.05, backoff_max=0.2
        )
        made.append(source)
        source.start()
        assert cache.wait_synced(10)
        # kmock does not replay events from an older resourceVersion the way an API server does, so a change
        # made between the list and the watch would wait for the next relist: let every watch open first.
        assert wait_for(lambda: all(i.stats.watches >= 1 for i in source.informers), timeout=10)
        return cache, source

    yield make
    for source in made:
        source.shutdown()
    assert wait_for(lambda: _threads() <= before, timeout=5), f"leaked threads: {_threads() - before}"


def test_pods_services_nodes_namespaces_are_reflected(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create("namespaces", namespace("shop", {"retina.sh": "observe"}))
    cluster.create("nodes", node(NODE, "198.18.0.1", "zone-a"))
    cluster.create(
        "pods",
        pod(
            "checkout-7f9c8d6b5-abcde",
            "198.18.3.7",
            labels={"app": "checkout", "pod-template-hash": "7f9c8d6b5"},
            owner=("ReplicaSet", "checkout-7f9c8d6b5"),
        ),
    )
    cluster.create("pods", pod("other-node-pod", "198.18.3.8", node="node-b"))
    cluster.create(
        "services",
        service("checkout", "198.18.100.1", selector={"app": "checkout"}, external=["198.18.101.1"], lb="198.18.102.1"),
    )
    cache, _ = make_source()

    found = cache.pod_by_ip("198.18.3.7")
    assert found is not None
    assert (found.namespace, found.workload_kind, found.workload_name) == ("shop", "Deployment", "checkout")
    assert cache.pod_by_ip("198.18.3.8") is None, "local context: other nodes' pods are not cached"
    for ip in ("198.18.100.1", "198.18.101.1", "198.18.102.1"):
        svc = cache.service_by_ip(ip)
        assert svc is not None and svc.name == "checkout"
    assert [s.name for s in cache.services_of(found)] == ["checkout"]
    assert cache.node_by_ip("198.18.0.1") is not None and cache.zone_of(NODE) == "zone-a"
    ns = cache.namespace("shop")
    assert ns is not None and ns.observe

    # created after the sync: arrives through the watch
    cluster.create("pods", pod("db-0", "198.18.3.9", owner=("StatefulSet", "db"), labels={"app": "db"}))
    assert wait_for(lambda: cache.pod_by_ip("198.18.3.9") is not None)
    db = cache.pod_by_ip("198.18.3.9")
    assert db is not None and (db.workload_kind, db.workload_name) == ("StatefulSet", "db")

    # relabelled
    cluster.patch("pods", "shop", "db-0", {"metadata": {"labels": {"app": "db2"}}})
    assert wait_for(lambda: (p := cache.pod_by_ip("198.18.3.9")) is not None and p.label("app") == "db2")

    # service IP changes, node zone changes, namespace annotation removed
    cluster.replace("services", service("checkout", "198.18.100.2", selector={"app": "checkout"}))
    assert wait_for(lambda: cache.service_by_ip("198.18.100.2") is not None)
    assert cache.service_by_ip("198.18.100.1") is None and cache.service_by_ip("198.18.101.1") is None
    cluster.patch("nodes", None, NODE, {"metadata": {"labels": {"topology.kubernetes.io/zone": "zone-b"}}})
    assert wait_for(lambda: cache.zone_of(NODE) == "zone-b")
    cluster.patch("namespaces", None, "shop", {"metadata": {"annotations": {"retina.sh": "no"}}})
    assert wait_for(lambda: (n := cache.namespace("shop")) is not None and not n.observe)

    # deletions
    cluster.delete("services", "shop", "checkout")
    cluster.delete("nodes", None, NODE)
    assert wait_for(lambda: cache.service_by_ip("198.18.100.2") is None and cache.node_by_ip("198.18.0.1") is None)


def test_host_network_pods_are_not_matched_by_ip(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create("nodes", node(NODE, "198.18.0.1"))
    cluster.create("pods", pod("kube-proxy", "198.18.0.1", host_network=True, owner=("DaemonSet", "kube-proxy")))
    cache, _ = make_source()
    assert cache.pod_by_ip("198.18.0.1") is None
    found = cache.lookup("198.18.0.1")
    assert found is not None and getattr(found, "zone", None) == "zone-1"


def test_deleted_pod_resolves_within_grace_then_not(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create("pods", pod("job-28493230-x", "198.18.3.20", owner=("Job", "backup-28493230")))
    cache, _ = make_source(grace=1.0)
    found = cache.pod_by_ip("198.18.3.20")
    assert found is not None and (found.workload_kind, found.workload_name) == ("CronJob", "backup")
    uid = found.uid
    cluster.delete("pods", "shop", "job-28493230-x")
    assert wait_for(lambda: cache.stats()["pods"] == 0)
    late = cache.pod_by_ip("198.18.3.20")
    assert late is not None and late.name == "job-28493230-x", "a late flow still gets the deleted pod's name"
    assert cache.pod_by_uid(uid) is not None
    assert wait_for(lambda: cache.pod_by_ip("198.18.3.20") is None, timeout=5)
    assert cache.pod_by_uid(uid) is None
    assert wait_for(lambda: cache.stats()["tombstones"] == 0 and cache.stats()["pod_ips"] == 0, timeout=5)


def test_ip_reuse_resolves_by_time(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create("pods", pod("old", "198.18.3.30", uid="uid-old", created="2024-01-01T00:00:00Z"))
    cache, _ = make_source(grace=60.0)
    cluster.delete("pods", "shop", "old")
    assert wait_for(lambda: cache.stats()["pods"] == 0)
    deleted_at = time.time_ns()
    time.sleep(0.05)
    new_created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    cluster.create("pods", pod("new", "198.18.3.30", uid="uid-new", created=new_created))
    assert wait_for(lambda: cache.stats()["pods"] == 1)
    before = cache.pod_by_ip("198.18.3.30", deleted_at - 1_000_000)
    after = cache.pod_by_ip("198.18.3.30", time.time_ns() + 5_000_000_000)
    assert before is not None and before.name == "old"
    assert after is not None and after.name == "new"
    claims = cache.claims(cache_key("198.18.3.30"))
    assert [c.pod.name for c in claims] == ["old", "new"] and claims[0].end_ns <= claims[1].start_ns


def cache_key(ip: str) -> bytes:
    from retina_otel.flows import ip_to_bytes

    return ip_to_bytes(ip)


def test_410_gone_relists_without_stale_or_lost_entries(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create("pods", pod("a", "198.18.3.40"))
    cluster.create("pods", pod("b", "198.18.3.41"))
    cache, source = make_source(grace=0.0)
    pods_informer = next(i for i in source.informers if i.label == "pods")
    lists = pods_informer.stats.lists
    # the next watch gets 410; break the current one so that a new watch starts
    cluster.inject_watch_error("pods", 410)
    cluster.delete("pods", "shop", "a")  # the broken stream may or may not carry this event
    cluster.create("pods", pod("c", "198.18.3.42"))
    _kick_watch(cluster, pods_informer)  # ends the idle watch; the next one gets the 410
    assert wait_for(lambda: pods_informer.stats.relists_gone >= 1, timeout=10), pods_informer.stats
    assert wait_for(lambda: pods_informer.stats.lists >= lists + 1, timeout=10)
    assert wait_for(lambda: cache.pod_by_ip("198.18.3.42") is not None)
    assert wait_for(lambda: cache.pod_by_ip("198.18.3.40") is None), "stale pod kept after relist"
    assert cache.pod_by_ip("198.18.3.41") is not None, "pod lost in relist"


def _kick_watch(cluster: EmulatedCluster, informer: Any) -> None:
    """End the informer's current (idle) watch so that it opens the next one with the injected fault."""
    import contextlib
    import socket

    resp = informer._resp
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def test_broken_watch_relists(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create("pods", pod("a", "198.18.3.50"))
    cache, source = make_source(grace=0.0)
    informer = next(i for i in source.informers if i.label == "pods")
    cluster.break_next_watch("pods")
    _kick_watch(cluster, informer)  # current watch ends -> the next one is cut by the server
    cluster.delete("pods", "shop", "a")
    cluster.create("pods", pod("d", "198.18.3.51"))

    def broken_relist_seen() -> bool:
        # A kick can land between two watches (the socket it shuts is already the old one); kick again
        # until the informer's next watch is the one the server cuts.
        if informer.stats.relists_broken >= 1:
            return True
        _kick_watch(cluster, informer)
        return False

    assert wait_for(broken_relist_seen, timeout=20, interval=0.5)
    assert wait_for(lambda: cache.pod_by_ip("198.18.3.51") is not None)
    assert wait_for(lambda: cache.pod_by_ip("198.18.3.50") is None)
    assert informer.alive


def test_remote_context_with_retina_endpoints(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create(
        "retinaendpoints",
        {
            "apiVersion": "retina.sh/v1alpha1",
            "kind": "RetinaEndpoint",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "re-1"},
            "spec": {
                "podIP": "198.18.3.60",
                "podIPs": ["198.18.3.60"],
                "labels": {"app": "web"},
                "ownerReferences": [{"kind": "DaemonSet", "name": "web"}],
                "nodeIP": "198.18.0.9",
            },
        },
    )
    cluster.create("pods", pod("ignored", "198.18.3.61"))
    cache, _ = make_source(local=False, retina_endpoints=True)
    found = cache.pod_by_ip("198.18.3.60")
    assert found is not None and (found.name, found.workload_kind, found.workload_name) == ("web-1", "DaemonSet", "web")
    assert cache.pod_by_ip("198.18.3.61") is None


def test_unreachable_api_backs_off_and_shuts_down() -> None:
    cache = K8sCache()
    source = ApiSource(
        cache, ClientSettings(api_url="http://127.0.0.1:9"), WatchPlan(), backoff_base=0.05, backoff_max=0.1
    )
    service_ = CacheService(cache, source)
    service_.start()
    service_.start()
    assert wait_for(lambda: all(i.stats.errors >= 2 for i in source.informers), timeout=10)
    assert not cache.synced
    service_.shutdown()
    service_.shutdown()
    assert not any(i.alive for i in source.informers)


class RecordingFilter:
    def __init__(self) -> None:
        self.ips: set[str] = set()
        self.calls: list[tuple[str, list[str]]] = []

    def add_ips(self, ips: list[str]) -> None:
        self.calls.append(("add", ips))
        self.ips.update(ips)

    def remove_ips(self, ips: list[str]) -> None:
        self.calls.append(("remove", ips))
        self.ips.difference_update(ips)


def test_annotation_opt_in_keeps_ip_filter_in_sync(cluster: EmulatedCluster, make_source: Any) -> None:
    cluster.create("namespaces", namespace("shop", {"retina.sh": "observe"}))
    cluster.create("namespaces", namespace("other"))
    cluster.create("pods", pod("a", "198.18.3.70"))
    cluster.create("pods", pod("b", "198.18.3.71", ns="other"))
    cluster.create("pods", pod("c", "198.18.3.72", ns="other", annotations={"retina.sh": "observe"}))
    cache, _ = make_source()
    target = RecordingFilter()
    ipset = RefCountedIpSet(target)
    selection = PodSelection(cache, ipset, enable_annotations=True)
    selection.attach()
    assert target.ips == {"198.18.3.70", "198.18.3.72"}
    cluster.patch("namespaces", None, "shop", {"metadata": {"annotations": {"retina.sh": "off"}}})
    assert wait_for(lambda: target.ips == {"198.18.3.72"})
    cluster.create("pods", pod("d", "198.18.3.73", ns="other", annotations={"retina.sh": "observe"}))
    assert wait_for(lambda: "198.18.3.73" in target.ips)
    cluster.delete("pods", "other", "c")
    assert wait_for(lambda: target.ips == {"198.18.3.73"})
    selection.detach()


def test_refcounted_ip_set_and_namespace_filter() -> None:
    target = RecordingFilter()
    ipset = RefCountedIpSet(target)
    ipset.set_rule("x", ["198.18.9.1", "198.18.9.2"])
    ipset.set_rule("y", ["198.18.9.2"])
    ipset.drop_rule("x")
    assert target.ips == {"198.18.9.2"}, "still wanted by rule y"
    ipset.drop_rule("y")
    assert target.ips == set()

    cache = K8sCache()
    for name, ns, ip in (("a", "shop", "198.18.9.10"), ("b", "kube-system", "198.18.9.11")):
        cache.upsert(
            "pods",
            PodInfo(
                uid=name,
                namespace=ns,
                name=name,
                node="",
                ips=(cache_key(ip),),
                labels=(),
                workload_kind="Pod",
                workload_name=name,
                created_ns=0,
                observe=False,
            ),
        )
    selection = PodSelection(cache, RefCountedIpSet(target))
    selection.attach()
    assert target.ips == {"198.18.9.10", "198.18.9.11"}
    selection.set_namespace_filter(exclude=["kube-system"])
    assert target.ips == {"198.18.9.10"}
    selection.set_namespace_filter(include=["kube-system"])
    assert target.ips == {"198.18.9.11"}


def test_workload_rules() -> None:
    labels = (("pod-template-hash", "5d4f8c"),)
    assert workload_of([{"kind": "ReplicaSet", "name": "web-5d4f8c"}], "p", labels) == ("Deployment", "web")
    assert workload_of([{"kind": "ReplicaSet", "name": "plain-rs"}], "p", (("pod-template-hash", "zz"),)) == (
        "ReplicaSet",
        "plain-rs",
    )
    assert workload_of([{"kind": "Job", "name": "nightly-28493230"}], "p", ()) == ("CronJob", "nightly")
    assert workload_of([{"kind": "Job", "name": "migrate-2"}], "p", ()) == ("Job", "migrate-2")
    assert workload_of([], "solo", ()) == ("Pod", "solo")


def test_file_source_reloads(tmp_path: Any) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(
        "nodes: [{name: n1, ips: [198.18.0.1], zone: z1}]\n"
        "endpoints:\n"
        "  - {name: web-1, namespace: shop, ips: [198.18.3.7, '2001:db8:3::7'], labels: {app: web},\n"
        "     workload: {kind: Deployment, name: web}, node: n1}\n"
        "services: [{name: web, namespace: shop, ips: [198.18.100.1], selector: {app: web}}]\n"
    )
    cache = K8sCache(grace_period=0)
    source = FileSource(cache, path, poll_interval=0.05)
    source.start()
    try:
        assert cache.synced
        web = cache.pod_by_ip("2001:db8:3::7")
        assert web is not None and (web.workload_kind, web.workload_name) == ("Deployment", "web")
        assert cache.service_by_ip("198.18.100.1") is not None and cache.zone_of("n1") == "z1"
        path.write_text("endpoints: [{name: api-1, namespace: shop, ips: [198.18.3.8]}]\n")
        assert wait_for(lambda: cache.pod_by_ip("198.18.3.8") is not None)
        assert wait_for(lambda: cache.pod_by_ip("198.18.3.7") is None)
        assert cache.service_by_ip("198.18.100.1") is None
        path.write_text("endpoints: [{oops")
        assert wait_for(lambda: source.errors >= 1)
        assert cache.pod_by_ip("198.18.3.8") is not None
    finally:
        source.shutdown()


def test_file_source_waits_for_a_write_to_settle(tmp_path: Any) -> None:
    """A writer that truncates and then writes is not seen half-way (the empty file would remove every pod)."""
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints: [{name: web-1, namespace: shop, ips: [198.18.3.7]}]\n")
    cache = K8sCache(grace_period=0)
    source = FileSource(cache, path, poll_interval=3600)  # polled by hand below
    source.start()
    try:
        assert cache.pod_by_ip("198.18.3.7") is not None
        path.write_text("")  # the truncation, as a poll sees it between open(path, "w") and write()
        assert not source.reload_if_changed() and cache.pod_by_ip("198.18.3.7") is not None
        path.write_text(
            "endpoints: [{name: web-1, namespace: shop, ips: [198.18.3.7]}, {name: api-1, ips: [198.18.3.8]}]\n"
        )
        assert not source.reload_if_changed() and cache.pod_by_ip("198.18.3.8") is None
        assert source.reload_if_changed()  # unchanged for one poll: loaded
        assert cache.pod_by_ip("198.18.3.7") is not None and cache.pod_by_ip("198.18.3.8") is not None
        assert source.loads == 2 and source.errors == 0
    finally:
        source.shutdown()
