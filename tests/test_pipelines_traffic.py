"""Two logs pipelines from one packetparser receiver, real traffic between sandbox pods.

``logs/full`` sends every flow record as it is to one OTLP sink; ``logs/loki`` enriches (k8sattributes),
filters (UDP to the server pod), masks (a few attributes) and rate-limits (a budget it never reaches) to
a second sink. The truth is nftables' counters in the client pod: the full sink has exactly what they
counted, the filtered sink exactly the matching subset of the full sink's records with only the kept
attributes, and the full sink never sees the other pipeline's enrichment.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from retina_otel.config import parse_config
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.support.otlp_sink import OtlpSink

pytestmark = pytest.mark.kernel

TO_SERVER, TO_OTHER = 7000, 7001
KEPT = [
    "source.address",
    "destination.address",
    "destination.port",
    "network.interface.index",
    "retina.flow.packets",
    "retina.flow.bytes",
    "destination.k8s.pod.name",
]


@pytest.fixture
def sinks() -> Iterator[tuple[OtlpSink, OtlpSink]]:
    full, loki = OtlpSink(), OtlpSink()
    full.start()
    loki.start()
    yield full, loki
    full.stop()
    loki.stop()


def _count_udp(client: Pod, server: Pod, other: Pod) -> None:
    ruleset = f"""
table inet rotel_pl {{
  counter to_server {{ }}
  counter to_other {{ }}
  chain out {{
    type filter hook output priority 0;
    ip daddr {server.ipv4} udp dport {TO_SERVER} counter name to_server
    ip daddr {other.ipv4} udp dport {TO_OTHER} counter name to_other
  }}
}}
"""
    subprocess.run(client.exec_args(["nft", "-f", "-"]), input=ruleset, text=True, check=True)


def _counters(client: Pod) -> dict[str, tuple[int, int]]:
    out = json.loads(client.run(["nft", "-j", "list", "counters", "table", "inet", "rotel_pl"]).stdout)
    return {
        c["counter"]["name"]: (int(c["counter"]["packets"]), int(c["counter"]["bytes"]))
        for c in out["nftables"]
        if "counter" in c
    }


def _send(client: Pod, pods: list[tuple[Pod, int, int]]) -> None:
    """Datagrams of varied sizes to listening sockets (no ICMP errors)."""
    listeners = []
    for pod, port, _ in pods:
        with pod.entered():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((pod.ipv4, port))
            listeners.append(s)
    with client.entered():
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for pod, port, count in pods:
            for i in range(count):
                c.sendto(b"x" * (20 + i % 300), (pod.ipv4, port))
        c.close()
    for s in listeners:
        s.close()


def _config(tmp_path: Path, sandbox: Sandbox, pods: list[Pod], full: OtlpSink, loki: OtlpSink) -> dict[str, Any]:
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        yaml.safe_dump(
            {"endpoints": [{"name": p.name, "namespace": "shop", "ips": [p.ipv4], "node": "node-a"} for p in pods]}
        )
    )

    def otlp(sink: OtlpSink) -> dict[str, Any]:
        return {
            "endpoint": f"127.0.0.1:{sink.port}",
            "tls": {"insecure": True},
            "signals": ["logs"],
            "flush_interval": 0.1,
        }

    server = pods[1]
    return {
        "receivers": {
            "packetparser": {
                "interfaces": [f"ro{sandbox.token}*"],
                "host_interface": "none",
                "aggregation": "low",
                "batch_interval": 0.2,
            }
        },
        "processors": {
            "k8sattributes": {
                "source": "file",
                "file_path": str(endpoints),
                "node_name": "node-a",
                "wait_for_sync": False,
            },
            "filter/loki": {"include": [{"destination.k8s.pod.name": server.name, "network.transport": "udp"}]},
            "transform/loki": {"keep": KEPT},
            "ratelimit/loki": {"records_per_second": 1_000_000},
        },
        "exporters": {"otlp/full": otlp(full), "otlp/loki": otlp(loki)},
        "service": {
            "telemetry": {"health": {"endpoint": ""}, "node_name": "node-a"},
            "pipelines": {
                "logs/full": {"receivers": ["packetparser"], "exporters": ["otlp/full"]},
                "logs/loki": {
                    "receivers": ["packetparser"],
                    "processors": ["k8sattributes", "filter/loki", "transform/loki", "ratelimit/loki"],
                    "exporters": ["otlp/loki"],
                },
            },
        },
    }


def _sum(records: list[dict[str, Any]], **where: Any) -> tuple[int, int]:
    rows = [a for a in records if all(a.get(k) == v for k, v in where.items())]
    return sum(a["retina.flow.packets"] for a in rows), sum(a["retina.flow.bytes"] for a in rows)


def test_full_and_filtered_pipelines_from_one_receiver(
    tmp_path: Path, sandbox: Sandbox, sinks: tuple[OtlpSink, OtlpSink]
) -> None:
    full, loki = sinks
    client, server, other = sandbox.add_pod("client"), sandbox.add_pod("server"), sandbox.add_pod("other")
    for pod in (server, other):
        assert wait_for(lambda p=pod: client.run(["ping", "-c1", "-W1", p.ipv4], check=False).returncode == 0)
    agent = Agent(parse_config(_config(tmp_path, sandbox, [client, server, other], full, loki), env={}))
    agent.start()
    try:
        receiver = next(s for s in agent.states() if s.id == "packetparser")
        assert receiver.status.value == "ok", receiver.detail
        _count_udp(client, server, other)
        _send(client, [(server, TO_SERVER, 400), (other, TO_OTHER, 250)])
        counted = _counters(client)
        receiver.component.flush()  # type: ignore[attr-defined]

        def udp(sink: OtlpSink) -> list[dict[str, Any]]:
            return [a for _, a, _ in sink.log_records() if a.get("network.transport") == "udp"]

        want = 2 * (counted["to_server"][0] + counted["to_other"][0])  # each packet at both pods' veths
        assert wait_for(lambda: _sum(udp(full))[0] >= want, timeout=20), (_sum(udp(full)), counted)
        loki_want = 2 * counted["to_server"][0]
        assert wait_for(lambda: _sum([a for _, a, _ in loki.log_records()])[0] >= loki_want, timeout=20)
    finally:
        agent.shutdown()

    full_udp = udp(full)
    loki_records = [a for _, a, _ in loki.log_records()]
    assert counted["to_server"][0] == 400 and counted["to_other"][0] == 250
    # The full sink: exactly nft's count, at the client's veth and at each destination's veth.
    for pod, port, name in ((server, TO_SERVER, "to_server"), (other, TO_OTHER, "to_other")):
        for veth in (client.host_ifindex, pod.host_ifindex):
            assert (
                _sum(
                    full_udp,
                    **{"destination.address": pod.ipv4, "destination.port": port, "network.interface.index": veth},
                )
                == counted[name]
            )
    assert _sum(full_udp) == (
        2 * (counted["to_server"][0] + counted["to_other"][0]),
        2 * (counted["to_server"][1] + counted["to_other"][1]),
    )
    # ... and never the other pipeline's enrichment.
    assert not [k for a in full_udp for k in a if ".k8s." in k]
    # The filtered sink: exactly the full sink's records to the server, with only the kept attributes.
    assert all(set(a) <= {*KEPT, "event.name"} for a in loki_records)
    assert {a["destination.k8s.pod.name"] for a in loki_records} == {server.name}

    def key(a: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(a.get(k) for k in KEPT if k != "destination.k8s.pod.name")

    matching = [a for a in full_udp if a["destination.address"] == server.ipv4]
    assert Counter(map(key, loki_records)) == Counter(map(key, matching))
    lost = agent.metrics.get("controlplane_networkobservability_lost_events_counter")
    assert lost is None or not lost.value(("ratelimit/loki", "rate_limited"))
