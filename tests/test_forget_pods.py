"""Deleting a pod removes its metric series and no other namespace's pod of the same name."""

from __future__ import annotations

from typing import Any

from retina_otel.component import CreateSettings
from retina_otel.flows import FlowBatch
from retina_otel.k8s import K8sCache
from retina_otel.k8s.models import PodInfo
from retina_otel.processors.k8sattributes import K8sAttributesConfig, K8sAttributesProcessor
from retina_otel.testing import CollectingConsumer, TestHost
from tests.test_flowmetrics import IPS, make, processor, row, series
from tests.test_k8sattributes import _pod

TWINS: list[dict[str, Any]] = [  # two pods named web-1, in ns1 and ns2, and one more in ns1
    {"k8s.pod.name": "web-1", "k8s.namespace.name": ns, "retina.endpoint.kind": "pod", "retina.endpoint.local": True}
    for ns in ("ns1", "ns2", "ns1")
]
TWINS[2]["k8s.pod.name"] = "db-1"


def _traffic() -> FlowBatch:
    batch = make(3, TWINS)
    for i in range(3):
        row(batch, i, i, -1, packets=1)
    return batch


def _config(labels: list[str]) -> dict[str, Any]:
    return {"metrics": [{"metricName": "forward_count", "sourceLabels": labels}]}


def test_namespace_and_name_remove_only_that_pod() -> None:
    proc, host = processor(_config(["namespace", "podname"]))
    proc.consume_flows(_traffic())
    assert set(series(host, "adv_forward_count")) == {
        ("egress", "ns1", "web-1"), ("egress", "ns2", "web-1"), ("egress", "ns1", "db-1")
    }  # fmt: skip
    assert proc.forget_pods(["ns1/web-1"]) == 1
    assert set(series(host, "adv_forward_count")) == {("egress", "ns2", "web-1"), ("egress", "ns1", "db-1")}


def test_without_the_namespace_label_a_shared_name_is_left_to_expire() -> None:
    proc, host = processor(_config(["podname"]))
    proc.consume_flows(_traffic())
    assert set(series(host, "adv_forward_count")) == {("egress", "web-1"), ("egress", "db-1")}
    assert proc.forget_pods(["ns1/web-1"]) == 0  # the series is ns2's web-1 too
    assert proc.forget_pods([IPS[0]]) == 0  # and no ip label here
    assert proc.forget_pods(["db-1"]) == 1  # a bare name still matches in any namespace


def test_k8sattributes_deletion_forgets_namespace_and_name() -> None:
    """The real path: k8sattributes' pod-deletion listener -> flowmetrics.forget_pods."""
    proc, host = processor(_config(["namespace", "podname"]))
    proc.consume_flows(_traffic())
    cache = K8sCache()
    pods: list[PodInfo] = [_pod("web-1", IPS[0], ns="ns1"), _pod("web-1", IPS[1], ns="ns2", uid="uid-web-1-b")]
    for pod in pods:
        cache.upsert("pods", pod)
    k8s = K8sAttributesProcessor(CreateSettings("k8sattributes", "processor"), K8sAttributesConfig(grace_period=0),
                                 CollectingConsumer(), cache=cache)  # fmt: skip
    k8s.start(TestHost())
    try:
        k8s.add_pod_deletion_listener(proc.forget_pods)
        cache.delete("pods", pods[0])
        assert set(series(host, "adv_forward_count")) == {("egress", "ns2", "web-1"), ("egress", "ns1", "db-1")}
    finally:
        k8s.shutdown()


def test_podname_only_series_go_when_no_other_namespace_has_the_name() -> None:
    """Without a namespace label: db-1's series goes with db-1 (no other db-1 lives); web-1's stays while
    ns2's web-1 lives, and goes with the last one."""
    proc, host = processor(_config(["podname"]))
    proc.consume_flows(_traffic())
    cache = K8sCache()
    pods = [_pod("web-1", IPS[0], ns="ns1"), _pod("web-1", IPS[1], ns="ns2", uid="uid-web-1-b"),
            _pod("db-1", IPS[2], ns="ns1")]  # fmt: skip
    for pod in pods:
        cache.upsert("pods", pod)
    k8s = K8sAttributesProcessor(CreateSettings("k8sattributes", "processor"), K8sAttributesConfig(grace_period=0),
                                 CollectingConsumer(), cache=cache)  # fmt: skip
    k8s.start(TestHost())
    try:
        k8s.add_pod_deletion_listener(proc.forget_pods)
        cache.delete("pods", pods[2])
        cache.delete("pods", pods[0])
        assert set(series(host, "adv_forward_count")) == {("egress", "web-1")}
        cache.delete("pods", pods[1])
        assert series(host, "adv_forward_count") == {}
    finally:
        k8s.shutdown()
