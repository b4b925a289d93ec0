"""flowmetrics driven by MetricsConfiguration objects served by kmock's KubernetesEmulator over HTTP.

The watcher uses the real ``kubernetes`` client in its own thread; the emulator runs on this test's
event loop, so the test only ever awaits (never blocks) while the watcher talks to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kmock

from retina_otel.component import CreateSettings
from retina_otel.flows import EndpointTable, Event, FlowBatch, Verdict, ip_to_bytes
from retina_otel.metricsconfig import MetricsConfigurationWatcher, effective_configuration
from retina_otel.processors.flowmetrics import FlowMetricsConfig, FlowMetricsProcessor
from retina_otel.testing import TestHost

RESOURCE = "retina.sh/v1alpha1/metricsconfigurations"
URL = "/apis/retina.sh/v1alpha1/metricsconfigurations"
P = "networkobservability_"

ENTRIES = [
    {"k8s.pod.name": "a", "k8s.namespace.name": "ns1", "retina.endpoint.local": True},
    {"k8s.pod.name": "b", "k8s.namespace.name": "ns2", "retina.endpoint.local": True},
]


def metrics_configuration(
    name: str, state: str, options: list[dict[str, Any]], **namespaces: list[str]
) -> dict[str, Any]:
    return {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "MetricsConfiguration",
        "metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"contextOptions": options, "namespaces": namespaces or {"exclude": []}},
        "status": {"state": state, "reason": ""},
    }


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def batch() -> FlowBatch:
    b = FlowBatch.empty(2)
    b.endpoints = EndpointTable(entries=ENTRIES)
    r = b.records
    r["event"] = Event.FLOW
    r["verdict"] = Verdict.FORWARDED
    r["proto"] = 6
    r["src_endpoint"] = [0, 1]
    r["dst_endpoint"] = [1, 0]
    r["src_ip"][0] = r["dst_ip"][1] = ip_to_bytes("198.18.0.1")
    r["src_ip"][1] = r["dst_ip"][0] = ip_to_bytes("198.18.0.2")
    r["packets"] = [3, 4]
    r["bytes"] = [30, 40]
    return b


def series(host: TestHost, name: str) -> dict[tuple[str, ...], Any] | None:
    family = host.metrics.get(P + name)
    if family is None:
        return None
    return {labels: value for labels, value, _ in family.snapshot().series}


def test_effective_configuration_picks_oldest_accepted() -> None:
    objs = {
        "x": metrics_configuration("x", "Initialized", []),
        "y": {**metrics_configuration("y", "Accepted", [{"metricName": "drop_count"}]),
              "metadata": {"name": "y", "creationTimestamp": "2025-02-01T00:00:00Z"}},
        "z": metrics_configuration("z", "Accepted", [{"metricName": "forward_count"}]),
        "e": metrics_configuration("e", "Errored", []),
    }
    name, spec = effective_configuration(objs)
    assert name == "z" and spec is not None and spec["contextOptions"] == [{"metricName": "forward_count"}]
    assert effective_configuration({"x": objs["x"], "e": objs["e"]}) == (None, None)


async def test_only_accepted_configuration_applies_and_changes_live(kmock: kmock.KubernetesEmulator) -> None:
    kmock.resources[RESOURCE] = kmock.ResourceInfo(kind="MetricsConfiguration", namespaced=False)
    options = [{"metricName": "drop_count", "sourceLabels": ["podname"]}]
    pending = metrics_configuration("retina", "Initialized", options)
    resp = await kmock.post(URL, json=pending)
    assert resp.status < 300, await resp.text()

    hook_calls: list[dict[str, Any]] = []
    config = FlowMetricsConfig.model_validate(
        {
            "metrics": [{"metricName": "forward_count", "sourceLabels": ["podname"]}],
            "metrics_configuration": {"enabled": True, "api_url": str(kmock.url), "watch_timeout_seconds": 5},
        }
    )
    proc = FlowMetricsProcessor(
        CreateSettings("flowmetrics", "processor"), config, None, namespace_filter=lambda **kw: hook_calls.append(kw)
    )
    host = TestHost()
    proc.start(host)
    try:
        watcher = proc._watcher
        assert isinstance(watcher, MetricsConfigurationWatcher)
        await eventually(watcher.synced.is_set)
        # Initialized is not applied: the standalone list stays in force.
        assert proc.plan.source == "config"
        assert host.metrics.get(P + "adv_drop_count") is None
        proc.consume_flows(batch())
        assert series(host, "adv_forward_count") == {("egress", "a"): 3.0, ("ingress", "b"): 3.0,
                                                      ("egress", "b"): 4.0, ("ingress", "a"): 4.0}

        # The operator accepts it: drop_count replaces forward_count, namespaces go to the hook.
        resp = await kmock.patch(f"{URL}/retina", json={"status": {"state": "Accepted"},
                                                         "spec": {"namespaces": {"include": ["ns1"]}}})
        assert resp.status < 300, await resp.text()
        await eventually(lambda: proc.plan.source == "metricsconfiguration/retina")
        assert host.metrics.get(P + "adv_forward_count") is None
        assert series(host, "adv_drop_count") == {}
        assert hook_calls[-1] == {"include": ["ns1"], "exclude": []}

        # An Errored second configuration is ignored.
        errored = metrics_configuration("other", "Errored", [{"metricName": "forward_bytes"}])
        errored["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
        await kmock.post(URL, json=errored)
        await asyncio.sleep(0.3)
        assert proc.plan.source == "metricsconfiguration/retina"
        assert host.metrics.get(P + "adv_forward_bytes") is None

        # A new spec takes effect without restart: forward_count by namespace, with a TTL.
        resp = await kmock.patch(
            f"{URL}/retina",
            json={"spec": {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["namespace"],
                                               "ttl": "10m"}]}},
        )
        assert resp.status < 300, await resp.text()
        await eventually(lambda: host.metrics.get(P + "adv_forward_count") is not None)
        assert host.metrics.get(P + "adv_drop_count") is None
        family = host.metrics.get(P + "adv_forward_count")
        assert family is not None and family.label_names == ("direction", "namespace")
        assert family.ttl_seconds == 600.0
        proc.consume_flows(batch())
        # namespace include [ns1]: only pod a's sides count
        assert series(host, "adv_forward_count") == {("egress", "ns1"): 3.0, ("ingress", "ns1"): 4.0}

        # Deleted: back to the standalone configuration.
        resp = await kmock.delete(f"{URL}/retina")
        assert resp.status < 300, await resp.text()
        await eventually(lambda: proc.plan.source == "config")
        family = host.metrics.get(P + "adv_forward_count")
        assert family is not None and family.label_names == ("direction", "podname")
    finally:
        await asyncio.to_thread(proc.shutdown)
    assert proc._watcher is None


async def test_watcher_recovers_from_a_broken_watch(kmock: kmock.KubernetesEmulator) -> None:
    kmock.resources[RESOURCE] = kmock.ResourceInfo(kind="MetricsConfiguration", namespaced=False)
    error = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "gone"}}
    kmock[kmock.action.WATCH, kmock.resource("retina.sh", "v1alpha1", "metricsconfigurations")][:1] << (
        lambda req: iter([error])
    )
    seen: list[tuple[str | None, Any]] = []
    watcher = MetricsConfigurationWatcher(lambda name, spec: seen.append((name, spec)), api_url=str(kmock.url),
                                          watch_timeout_seconds=5, retry_seconds=0.1)
    watcher.start()
    try:
        await eventually(lambda: watcher.stats.relists_gone >= 1)
        accepted = metrics_configuration("m", "Accepted", [{"metricName": "forward_count"}])
        await kmock.post(URL, json=accepted)
        await eventually(lambda: bool(seen) and seen[-1][0] == "m")
    finally:
        await asyncio.to_thread(watcher.shutdown)


async def test_watcher_relists_every_relist_seconds(kmock: kmock.KubernetesEmulator) -> None:
    """The watcher is the shared Informer: watches resume from the resourceVersion, and a full list comes
    at least every ``relist_seconds`` (an object that appeared meanwhile is seen either way)."""
    kmock.resources[RESOURCE] = kmock.ResourceInfo(kind="MetricsConfiguration", namespaced=False)
    seen: list[tuple[str | None, Any]] = []
    watcher = MetricsConfigurationWatcher(lambda name, spec: seen.append((name, spec)), api_url=str(kmock.url),
                                          watch_timeout_seconds=1, relist_seconds=1, retry_seconds=0.1)
    assert watcher.stats.lists == 0  # nothing happens before start
    watcher.start()
    try:
        await eventually(watcher.synced.is_set)
        assert seen == [(None, None)]
        await eventually(lambda: watcher.stats.lists >= 3)
        assert watcher.stats.errors == 0
        await kmock.post(URL, json=metrics_configuration("m", "Accepted", [{"metricName": "forward_count"}]))
        await eventually(lambda: bool(seen) and seen[-1][0] == "m")
        assert len(seen) == 2  # relists of an unchanged set report nothing
    finally:
        await asyncio.to_thread(watcher.shutdown)
