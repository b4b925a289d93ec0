"""Components that find each other through the agent: k8sattributes <-> flowmetrics."""

from __future__ import annotations

from pathlib import Path

import yaml

from retina_otel.config import parse_config
from retina_otel.flows import Direction, Event, FlowBatch, ObservationPoint, Verdict, ip_to_bytes
from retina_otel.service import Agent
from retina_otel.testing import wait_for


def _endpoints(path: Path, pods: list[tuple[str, str]]) -> None:
    path.write_text(
        yaml.safe_dump(
            {"endpoints": [{"name": name, "namespace": "shop", "ips": [ip], "node": "node-a"} for name, ip in pods]}
        )
    )


def _batch(src: str, dst: str, packets: int) -> FlowBatch:
    """Packets between two local pods as packetparser reports them: at each pod's veth."""
    batch = FlowBatch.empty(2, receiver="test")
    r = batch.records
    r["src_ip"] = ip_to_bytes(src)
    r["dst_ip"] = ip_to_bytes(dst)
    r["proto"], r["ip_version"], r["src_port"], r["dst_port"] = 17, 4, 4000, 53
    r["direction"] = [Direction.EGRESS, Direction.INGRESS]
    r["observation_point"] = [ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_ENDPOINT]
    r["verdict"], r["event"] = Verdict.FORWARDED, Event.FLOW
    r["packets"], r["bytes"] = packets, packets * 100
    return batch


def test_deleted_pods_lose_their_series_after_the_grace_period(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.yaml"
    _endpoints(endpoints, [("checkout-1", "198.18.9.1"), ("cart-1", "198.18.9.2")])
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 3600}},
            "processors": {
                "k8sattributes": {
                    "source": "file",
                    "file_path": str(endpoints),
                    "file_poll_interval": 0.1,
                    "grace_period": 0.5,
                    "node_name": "node-a",
                },
                "flowmetrics": {"metrics": [{"metric_name": "forward", "source_labels": ["podname"]}]},
            },
            "exporters": {"debug": {"verbosity": "basic", "stream": "stderr"}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}, "node_name": "node-a"},
                "pipelines": {
                    "logs": {
                        "receivers": ["synthetic"],
                        "processors": ["k8sattributes", "flowmetrics"],
                        "exporters": ["debug"],
                    },
                },
            },
        },
        env={},
    )
    agent = Agent(config)
    agent.start()
    try:
        assert wait_for(lambda: agent.readiness()[0], timeout=10), agent.readiness()
        head = next(s.component for s in agent.states() if s.id == "k8sattributes")
        head.consume_flows(_batch("198.18.9.1", "198.18.9.2", 3))  # type: ignore[attr-defined]
        family = agent.metrics.get("networkobservability_adv_forward_count")
        assert family is not None

        def pods() -> set[str]:
            snap = family.snapshot()
            i = snap.label_names.index("podname")
            return {labels[i] for labels, _, _ in snap.series}

        assert {"checkout-1", "cart-1"} <= pods()
        _endpoints(endpoints, [("cart-1", "198.18.9.2")])  # checkout-1 deleted

        # Gone after the grace period, at the next batch or scrape; cart-1 stays.
        def checkout_gone() -> bool:
            agent.metrics.collect()
            return "checkout-1" not in pods()

        assert wait_for(checkout_gone, timeout=10)
        assert "cart-1" in pods()
    finally:
        agent.shutdown()


def test_extensions_are_registered_before_start() -> None:
    from retina_otel.k8s import IpFilter

    config = parse_config(
        {
            "receivers": {"packetparser": {}, "tcplatency": {}},
            "processors": {"tcplatency": {}},
            "exporters": {"nop": {}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs": {"receivers": ["packetparser"], "processors": ["tcplatency"], "exporters": ["nop"]},
                    "metrics": {"receivers": ["tcplatency"], "exporters": ["nop"]},
                },
            },
        },
        env={},
    )
    agent = Agent(config)  # built, not started: nothing touches the kernel
    ip_filter = agent.get_extension("ip_filter")
    assert isinstance(ip_filter, IpFilter)
    assert agent.get_extension("tcp_latency") is not None


def test_readiness_waits_for_the_first_kubernetes_sync() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens: the watch cache never syncs
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 3600}},
            "processors": {
                "k8sattributes": {"api_url": f"http://127.0.0.1:{dead}", "sync_timeout": 60, "node_name": "n"}
            },
            "exporters": {"nop": {}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["nop"]}
                },
            },
        },
        env={},
    )
    agent = Agent(config)
    agent.start()
    try:
        ready, detail = agent.readiness()
        assert not ready
        components = detail["components"]
        assert isinstance(components, dict)
        (k8s,) = [v for k, v in components.items() if k.startswith("k8sattributes")]
        assert k8s["status"] == "starting"
        assert "sync" in k8s["detail"]
    finally:
        agent.shutdown()
