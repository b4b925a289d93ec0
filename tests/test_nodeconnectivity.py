"""nodeconnectivity: each agent probes the other nodes' agents (health port) and publishes Retina's
node_connectivity gauges. Probes against real HTTP servers on loopback; then two agent processes on two
sandbox "nodes" (network namespaces) probing each other."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from retina_otel.component import CreateSettings
from retina_otel.flows import ip_to_bytes
from retina_otel.health import HealthServer
from retina_otel.k8s import K8sCache, NodeInfo
from retina_otel.processors.k8sattributes import K8sAttributesConfig, K8sAttributesProcessor
from retina_otel.receivers.nodeconnectivity import FACTORY, NodeConnectivityReceiver
from retina_otel.receivers.nodeconnectivity.probe import probe_all
from retina_otel.receivers.nodeconnectivity.receiver import LATENCY, STATUS, pick_round
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import TestHost, wait_for


def _port_free_on(addresses: list[str]) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = int(s.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


@pytest.fixture
def health_servers() -> Iterator[tuple[list[str], int, list[HealthServer]]]:
    """Agents' health endpoints on 127.0.0.2..6, one port (as a DaemonSet has it)."""
    addresses = [f"127.0.0.{i}" for i in range(2, 7)]
    port = _port_free_on(addresses)
    servers = [HealthServer(f"{a}:{port}", lambda: (True, {"ready": True})) for a in addresses]
    for server in servers:
        server.start()
    try:
        yield addresses, port, servers
    finally:
        for server in servers:
            server.shutdown()


def test_pick_round_is_round_robin_and_bounded() -> None:
    names = [f"n{i}" for i in range(5)]
    assert pick_round(names, "", 10) == names
    assert pick_round(names, "", 2) == ["n0", "n1"]
    assert pick_round(names, "n1", 2) == ["n2", "n3"]
    assert pick_round(names, "n3", 2) == ["n4", "n0"]  # wraps
    assert pick_round(names, "n2x", 2) == ["n3", "n4"]  # the last one left the cluster: carry on after it


def test_probes_tell_up_refused_wrong_status_and_silent_apart(
    health_servers: tuple[list[str], int, list[HealthServer]],
) -> None:
    addresses, port, _servers = health_servers
    silent = socket.socket()  # accepts (backlog) but never answers
    silent.bind(("127.0.0.7", port))
    silent.listen(4)
    try:
        started = time.perf_counter()
        results = probe_all(
            [("up", addresses[0]), ("refused", "127.0.0.8"), ("silent", "127.0.0.7"), ("up2", addresses[1])],
            port=port,
            timeout=0.5,
            concurrency=2,
        )
        elapsed = time.perf_counter() - started
        wrong = probe_all([("ready", addresses[0])], port=port, path="/nowhere", timeout=1)
    finally:
        silent.close()
    by = {r.target: r for r in results}
    assert set(by) == {"up", "refused", "silent", "up2"}
    assert by["up"].ok and by["up2"].ok and 0 < by["up"].seconds < 0.5
    assert not by["refused"].ok and by["refused"].error == "ECONNREFUSED"
    assert not by["silent"].ok and by["silent"].error == "timeout" and by["silent"].seconds >= 0.5
    assert elapsed < 1.5  # in flight together, not one after another
    assert not wrong[0].ok and wrong[0].error == "status 404"


def test_receiver_probes_a_bounded_round_robin_and_forgets_nodes_that_left(
    health_servers: tuple[list[str], int, list[HealthServer]],
) -> None:
    addresses, port, servers = health_servers
    cache = K8sCache()
    cache.upsert("nodes", NodeInfo("node-self", (ip_to_bytes("127.0.0.1"),), ""))
    for i, address in enumerate(addresses):
        cache.upsert("nodes", NodeInfo(f"node-{i}", (ip_to_bytes(address),), ""))
    # The agent's k8sattributes processor (not started: it offers the cache it was given).
    k8s = K8sAttributesProcessor(CreateSettings("k8sattributes", "processor"), K8sAttributesConfig(), None, cache=cache)
    host = TestHost(node_name="node-self", extensions={"k8s_cache": k8s})
    r = FACTORY.create(
        CreateSettings("nodeconnectivity", "receiver"),
        FACTORY.config_model(interval=3600, port=port, max_nodes_per_interval=2, timeout=1),
        None,
    )
    assert isinstance(r, NodeConnectivityReceiver)
    r.start(host)
    try:
        rounds = [sorted(res.target for res in r.probe_round()) for _ in range(3)]
        assert rounds == [["node-0", "node-1"], ["node-2", "node-3"], ["node-0", "node-4"]]
        status, latency = host.metrics.get(STATUS), host.metrics.get(LATENCY)
        assert status is not None and latency is not None
        for i in range(5):
            assert status.value(("node-self", f"node-{i}")) == 1.0
            value = latency.value(("node-self", f"node-{i}"))
            assert isinstance(value, float) and 0 < value < 1
        assert status.value(("node-self", "node-self")) is None  # never itself
        # node-1's agent stops answering; node-4 leaves the cluster.
        servers[1].shutdown()
        cache.delete("nodes", NodeInfo("node-4", (), ""))
        r.probe_round()  # node-1, node-2
        assert status.value(("node-self", "node-1")) == 0.0
        assert latency.value(("node-self", "node-1")) is None  # no stale latency for an unreachable node
        assert status.value(("node-self", "node-4")) is None and latency.value(("node-self", "node-4")) is None
    finally:
        r.shutdown()
        r.shutdown()


# -- two agents on two sandbox nodes ---------------------------------------------------------------------


def _agent_config(path: Path, node: str, nodes_file: Path) -> Path:
    config = {
        # synthetic: a logs pipeline for k8sattributes (whose watch cache lists the nodes) needs a flow source
        "receivers": {"nodeconnectivity": {"interval": 1, "timeout": 1}, "synthetic": {"records_per_batch": 1}},
        "processors": {"k8sattributes": {"source": "file", "file_path": str(nodes_file), "wait_for_sync": False}},
        "exporters": {"prometheus": {"endpoint": "0.0.0.0:10093"}, "nop": {}},
        "service": {
            "telemetry": {"node_name": node, "health": {"endpoint": "0.0.0.0:18081"}},
            "pipelines": {
                "metrics": {"receivers": ["nodeconnectivity"], "exporters": ["prometheus"]},
                "logs": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["nop"]},
            },
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _scrape(pod: Pod) -> dict[tuple[str, str, str], float]:
    """(metric, source, target) -> value from the agent in ``pod``."""
    with urllib.request.urlopen(f"http://{pod.ipv4}:10093/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("networkobservability_node_connectivity"):
            continue
        name, _, rest = line.partition("{")
        labels_text, _, value = rest.rpartition("} ")
        labels = dict(part.split("=", 1) for part in labels_text.split(","))
        out[name, json.loads(labels["source_node_name"]), json.loads(labels["target_node_name"])] = float(value)
    return out


@pytest.mark.kernel
def test_two_agents_on_two_nodes_probe_each_other(sandbox: Sandbox, tmp_path: Path) -> None:
    a, b = sandbox.add_pod("node-a"), sandbox.add_pod("node-b")
    nodes_file = tmp_path / "nodes.yaml"
    nodes = [{"name": "node-a", "ips": [a.ipv4]}, {"name": "node-b", "ips": [b.ipv4]}]
    nodes_file.write_text(yaml.safe_dump({"nodes": nodes}))
    agents: dict[str, subprocess.Popen[bytes]] = {}
    for pod in (a, b):
        config = _agent_config(tmp_path / f"{pod.name}.yaml", pod.name, nodes_file)
        log = (tmp_path / f"{pod.name}.log").open("wb")
        argv = [sys.executable, "-m", "retina_otel", "agent", "--config", str(config)]
        agents[pod.name] = pod.popen(argv, stdout=log, stderr=log)

    def both_see_each_other() -> bool:
        try:
            seen_a, seen_b = _scrape(a), _scrape(b)
        except OSError:
            return False
        return (
            seen_a.get((STATUS, "node-a", "node-b")) == 1.0
            and seen_b.get((STATUS, "node-b", "node-a")) == 1.0
            and (LATENCY, "node-a", "node-b") in seen_a
        )

    try:
        assert wait_for(both_see_each_other, timeout=60, interval=0.5)
        seen = _scrape(a)
        latency = seen[LATENCY, "node-a", "node-b"]
        assert 0 < latency < 0.5  # two veths through the host: well under a second
        assert (STATUS, "node-a", "node-a") not in seen
        # node-b's agent goes away: node-a reports it unreachable and drops the stale latency.
        agents["node-b"].terminate()
        assert agents["node-b"].wait(30) == 0
        assert wait_for(lambda: _scrape(a).get((STATUS, "node-a", "node-b")) == 0.0, timeout=20, interval=0.5)
        assert (LATENCY, "node-a", "node-b") not in _scrape(a)
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    for name in agents:
        text = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in text, text[-3000:]


@pytest.mark.kernel
def test_one_agent_with_a_kubernetes_source_wires_both_features(
    health_servers: tuple[list[str], int, list[HealthServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's own wiring: k8sattributes (source kubernetes, kmock) lends its Node watch to
    nodeconnectivity and its connection settings to tcplatency's EndpointSlice watch."""
    from retina_otel.config import parse_config
    from retina_otel.service import Agent
    from retina_otel.testing_k8s import EmulatedCluster
    from tests.test_apiserver_discovery import endpoint_slice

    addresses, port, _servers = health_servers
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with EmulatedCluster() as cluster:
        for name, address in (("node-self", "127.0.0.1"), ("node-peer", addresses[0])):
            cluster.create(
                "nodes",
                {"metadata": {"name": name}, "status": {"addresses": [{"type": "InternalIP", "address": address}]}},
            )
        cluster.create("endpointslices", endpoint_slice("kubernetes", "198.18.7.7"))
        config = parse_config(
            {
                "receivers": {
                    "nodeconnectivity": {"interval": 1, "port": port},
                    "tcplatency": {"interval": 3600},
                    "synthetic": {"records_per_batch": 1},
                },
                "processors": {"k8sattributes": {"api_url": cluster.url, "node_name": "node-self"}},
                "exporters": {"nop": {}},
                "service": {
                    "telemetry": {"node_name": "node-self", "health": {"endpoint": "127.0.0.1:0"}},
                    "pipelines": {
                        "metrics": {"receivers": ["nodeconnectivity", "tcplatency"], "exporters": ["nop"]},
                        "logs": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["nop"]},
                    },
                },
            },
            env={},
        )
        agent = Agent(config)
        agent.start()
        try:
            status = agent.metrics.get(STATUS)
            assert status is not None
            assert wait_for(lambda: status.value(("node-self", "node-peer")) == 1.0, timeout=20)
            assert status.value(("node-self", "node-self")) is None
            tcplatency = next(s.component for s in agent.states() if s.id == "tcplatency")
            assert wait_for(lambda: tcplatency.apiserver_ips() == ["198.18.7.7"], timeout=20)  # type: ignore[attr-defined]
        finally:
            agent.shutdown()
