"""API-server latency finds the API server as a cluster has it: the ``default/kubernetes`` EndpointSlices
(watched in kmock), ``KUBERNETES_SERVICE_HOST`` (an address or a name) and ``apiserver_ips`` as an override."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.component import CreateSettings
from retina_otel.flows import bytes_to_ip
from retina_otel.k8s.apiserver import ApiServerLocator, resolve_host, slice_from_raw
from retina_otel.k8s.watch import ClientSettings
from retina_otel.metrics.store import HistogramValue
from retina_otel.processors.k8sattributes import FACTORY as K8S_FACTORY
from retina_otel.receivers.tcplatency import FACTORY, TcpLatencyReceiver
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import TestHost, wait_for
from retina_otel.testing_k8s import EmulatedCluster
from tests.test_tcplatency import _serve


def endpoint_slice(
    name: str, *addresses: str, service: str = "kubernetes", unready: tuple[str, ...] = ()
) -> dict[str, Any]:
    endpoints: list[dict[str, Any]] = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    endpoints += [{"addresses": [a], "conditions": {"ready": False}} for a in unready]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as c:
        yield c


def test_slice_addresses_leave_out_unready_endpoints() -> None:
    raw = endpoint_slice("kubernetes", "198.18.7.1", "198.18.7.2", unready=("198.18.7.3",))
    info = slice_from_raw(raw)
    assert info is not None and info.ips == ("198.18.7.1", "198.18.7.2")
    raw["endpoints"].append({"addresses": ["not-an-ip"]})  # no conditions: ready, but skipped as unparsable
    raw["endpoints"].append({"addresses": ["198.18.7.4"]})
    assert slice_from_raw(raw).ips == ("198.18.7.1", "198.18.7.2", "198.18.7.4")  # type: ignore[union-attr]


def test_service_host_is_taken_as_an_address_or_resolved_as_a_name() -> None:
    assert resolve_host("198.18.0.1") == {"198.18.0.1"}
    assert resolve_host("[2001:db8::1]") == {"2001:db8::1"}
    assert "127.0.0.1" in resolve_host("localhost")
    assert resolve_host("no-such-host.invalid") == set()


def test_locator_follows_the_kubernetes_endpoint_slices(
    cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "localhost")
    cluster.create("endpointslices", endpoint_slice("kubernetes", "198.18.7.1", unready=("198.18.7.9",)))
    cluster.create("endpointslices", endpoint_slice("web-abcde", "198.18.8.1", service="web"))  # another Service
    seen: list[list[str]] = []
    locator = ApiServerLocator(seen.append, watch=ClientSettings(api_url=cluster.url), resolve_interval=0.2)
    locator.start()
    try:
        assert locator.watching
        # The slice's address and the name, resolved in the background.
        assert wait_for(lambda: {"198.18.7.1", "127.0.0.1"} <= set(locator.addresses()), timeout=10)
        now = set(locator.addresses())
        assert not now & {"198.18.7.9", "198.18.8.1"}
        # A second control-plane slice, then a move: each reaches the set through the watch.
        cluster.create("endpointslices", endpoint_slice("kubernetes-2", "198.18.7.2"))
        assert wait_for(lambda: "198.18.7.2" in locator.addresses(), timeout=10)
        cluster.replace("endpointslices", endpoint_slice("kubernetes", "198.18.7.3"))
        moved = {"198.18.7.2", "198.18.7.3"}
        assert wait_for(lambda: set(locator.addresses()) - {"127.0.0.1", "::1"} == moved, timeout=10)
        cluster.delete("endpointslices", "default", "kubernetes-2")
        assert wait_for(lambda: "198.18.7.2" not in locator.addresses(), timeout=10)
        # Only changes are published, each a complete sorted set.
        assert all(a != b for a, b in itertools.pairwise(seen))
        assert all(s == sorted(s) for s in seen)
    finally:
        locator.shutdown()
    threads = {t.name for t in threading.enumerate()}
    assert not threads & {"k8s-watch-apiserver-endpointslices", "apiserver-resolve"}


def test_override_replaces_discovery(cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "198.18.0.10")
    cluster.create("endpointslices", endpoint_slice("kubernetes", "198.18.7.1"))
    locator = ApiServerLocator(lambda ips: None, override=["198.18.9.9"], watch=ClientSettings(api_url=cluster.url))
    locator.start()
    try:
        assert not locator.watching
        assert locator.addresses() == ["198.18.9.9"]
    finally:
        locator.shutdown()
    env_only = ApiServerLocator(lambda ips: None)
    env_only.start()
    assert env_only.addresses() == ["198.18.0.10"] and not env_only.watching
    env_only.shutdown()


def _kernel_addresses(r: TcpLatencyReceiver) -> set[str]:
    table = r._bpf["apiserver_ips"]
    return {str(bytes_to_ip(bytes(k))) for k in table}


def _connect(client: Pod, server: Pod, port: int, count: int) -> None:
    thread, listener = _serve(server, port, count)
    for _ in range(count):
        with client.entered():
            conn = socket.create_connection((server.ipv4, port), timeout=5)
        with conn:
            conn.sendall(b"x")
            conn.recv(10)
    thread.join(10)
    listener.close()


def _handshakes(host: TestHost) -> int:
    family = host.metrics.get("networkobservability_adv_node_apiserver_tcp_handshake_latency")
    value = family.value(()) if family is not None else None
    return value.count if isinstance(value, HistogramValue) else 0


@pytest.mark.kernel
def test_receiver_measures_the_apiserver_the_endpoint_slices_name(
    cluster: EmulatedCluster, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    client, first, second = sandbox.add_pod("client"), sandbox.add_pod("cp1"), sandbox.add_pod("cp2")
    cluster.create("endpointslices", endpoint_slice("kubernetes", first.ipv4))
    # The agent's Kubernetes source (a k8sattributes processor, not started here) lends its settings.
    k8s = K8S_FACTORY.create(
        CreateSettings("k8sattributes", "processor"),
        K8S_FACTORY.config_model(api_url=cluster.url),
        None,  # type: ignore[arg-type]
    )
    host = TestHost(extensions={"k8s_cache": k8s})
    r = FACTORY.create(CreateSettings("tcplatency", "receiver"), FACTORY.config_model(interval=3600), None)
    assert isinstance(r, TcpLatencyReceiver)
    r.start(host)
    try:
        assert wait_for(lambda: _kernel_addresses(r) == {first.ipv4}, timeout=15)
        _connect(client, first, 6443, 3)
        r.poll()
        assert _handshakes(host) == 3
        # The control plane moves: the slice changes, the kernel follows, the old address no longer counts.
        cluster.replace("endpointslices", endpoint_slice("kubernetes", second.ipv4))
        assert wait_for(lambda: _kernel_addresses(r) == {second.ipv4}, timeout=15)
        assert r.apiserver_ips() == [second.ipv4]
        _connect(client, first, 6444, 2)
        _connect(client, second, 6443, 4)
        r.poll()
        assert _handshakes(host) == 3 + 4
    finally:
        r.shutdown()
    assert not [t for t in threading.enumerate() if t.name == "k8s-watch-apiserver-endpointslices"]


def test_discovery_modes_choose_the_watch_and_its_settings(
    cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cluster.create("endpointslices", endpoint_slice("kubernetes", "198.18.7.5"))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{cluster.url}'}}}}]\n"
        "users: [{name: kmock, user: {token: t}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The client reads $KUBECONFIG once, when it is first imported (maybe by an earlier test).
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))

    def locator(extensions: dict[str, object], **config: Any) -> ApiServerLocator:
        r = FACTORY.create(CreateSettings("tcplatency", "receiver"), FACTORY.config_model(**config), None)
        assert isinstance(r, TcpLatencyReceiver)
        return r._make_locator(TestHost(extensions=extensions))

    file_source = K8S_FACTORY.create(
        CreateSettings("k8sattributes", "processor"),
        K8S_FACTORY.config_model(source="file", file_path=str(tmp_path / "none.yaml")),
        None,  # type: ignore[arg-type]
    )
    api_source = K8S_FACTORY.create(
        CreateSettings("k8sattributes", "processor"), K8S_FACTORY.config_model(api_url=cluster.url), None  # type: ignore[arg-type]
    )
    cases = [
        ({}, {}, False),  # auto, no Kubernetes source in the agent: no watch, no kubernetes import needed
        ({"k8s_cache": file_source}, {}, False),  # auto with a file source: still none
        ({"k8s_cache": api_source}, {}, True),  # auto with a Kubernetes source: its settings
        ({"k8s_cache": api_source}, {"apiserver_discovery": "off"}, False),
        ({}, {"apiserver_discovery": "kubernetes"}, True),  # always: the kubeconfig ($KUBECONFIG) here
        ({"k8s_cache": api_source}, {"apiserver_ips": ["198.18.9.1"]}, False),  # the override wins
    ]
    for extensions, config, watches in cases:
        found = locator(extensions, **config)
        found.start()
        try:
            assert found.watching is watches, (extensions, config)
            if watches:
                assert wait_for(lambda f=found: f.addresses() == ["198.18.7.5"], timeout=10), (extensions, config)
        finally:
            found.shutdown()
