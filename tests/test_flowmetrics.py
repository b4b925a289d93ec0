"""flowmetrics: exact series and values from crafted FlowBatches and EndpointTables."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from retina_otel.component import CreateSettings
from retina_otel.flows import STRINGS, Direction, EndpointTable, Event, FlowBatch, TcpFlag, Verdict, ip_to_bytes
from retina_otel.metrics.store import OVERFLOW_LABEL_VALUE, HistogramValue
from retina_otel.processors.flowmetrics import FACTORY, FlowMetricsConfig, FlowMetricsProcessor
from retina_otel.processors.flowmetrics.spec import parse_duration, resolve_metric_name
from retina_otel.registry import get_factory
from retina_otel.testing import CollectingConsumer, TestHost

P = "networkobservability_"

# Endpoint table: 0 = pod a (local, ns1, Deployment web), 1 = pod b (local, ns2), 2 = pod c (remote node, ns1)
ENTRIES: list[dict[str, Any]] = [
    {
        "k8s.pod.name": "a",
        "k8s.namespace.name": "ns1",
        "k8s.workload.kind": "Deployment",
        "k8s.workload.name": "web",
        "k8s.service.name": "web-svc",
        "cloud.availability_zone": "z1",
        "retina.endpoint.kind": "pod",
        "retina.endpoint.local": True,
    },
    {"k8s.pod.name": "b", "k8s.namespace.name": "ns2", "retina.endpoint.kind": "pod", "retina.endpoint.local": True},
    {"k8s.pod.name": "c", "k8s.namespace.name": "ns1", "retina.endpoint.kind": "pod", "retina.endpoint.local": False},
]
IPS = {0: "198.18.0.1", 1: "198.18.0.2", 2: "198.18.1.3", -1: "198.19.0.9"}


def row(
    batch: FlowBatch,
    i: int,
    src: int,
    dst: int,
    *,
    event: Event = Event.FLOW,
    verdict: Verdict = Verdict.FORWARDED,
    direction: Direction = Direction.EGRESS,
    proto: int = 6,
    sport: int = 40000,
    dport: int = 80,
    **values: Any,
) -> None:
    r = batch.records
    r["src_endpoint"][i] = src
    r["dst_endpoint"][i] = dst
    r["src_ip"][i] = ip_to_bytes(IPS[src])
    r["dst_ip"][i] = ip_to_bytes(IPS[dst])
    r["ip_version"][i] = 4
    r["event"][i] = event
    r["verdict"][i] = verdict
    r["direction"][i] = direction
    r["proto"][i] = proto
    r["src_port"][i] = sport
    r["dst_port"][i] = dport
    for key, value in values.items():
        r[key][i] = value


def make(n: int, entries: Sequence[Mapping[str, Any]] = ENTRIES) -> FlowBatch:
    batch = FlowBatch.empty(n, receiver="test")
    batch.endpoints = EndpointTable(entries=entries)
    return batch


def processor(config: dict[str, Any], host: TestHost | None = None) -> tuple[FlowMetricsProcessor, TestHost]:
    proc = FACTORY.create(CreateSettings("flowmetrics", "processor"), FlowMetricsConfig.model_validate(config), None)
    assert isinstance(proc, FlowMetricsProcessor)
    h = host or TestHost()
    proc.start(h)
    return proc, h


def series(host: TestHost, name: str) -> dict[tuple[str, ...], Any]:
    family = host.metrics.get(P + name)
    assert family is not None, f"{name} not declared"
    snap = family.snapshot()
    return {labels: value for labels, value, _ in snap.series}


def labels_of(host: TestHost, name: str) -> tuple[str, ...]:
    family = host.metrics.get(P + name)
    assert family is not None
    return family.label_names


def test_registry_and_defaults() -> None:
    assert get_factory("processor", "flowmetrics") is FACTORY
    cfg = FACTORY.default_config()
    assert cfg.pod_level and not cfg.remote_context and cfg.max_series_per_metric == 50_000
    with pytest.raises(ValidationError):
        FlowMetricsConfig.model_validate({"metrics": [{"metricName": "bogus"}]})
    with pytest.raises(ValidationError):
        FlowMetricsConfig.model_validate({"metrics": [{"metricName": "drop_count", "ttl": "5 minutes"}]})
    with pytest.raises(ValidationError):
        FlowMetricsConfig.model_validate({"unknown": 1})
    with pytest.raises(ValidationError):
        FlowMetricsConfig.model_validate({"namespaces": {"include": ["a"], "exclude": ["b"]}})


def test_name_resolution_and_durations() -> None:
    assert resolve_metric_name("forward_count").value == "adv_forward_count"  # type: ignore[union-attr]
    assert resolve_metric_name("tcp_flag_gauges").value == "adv_tcpflags_count"  # type: ignore[union-attr]
    assert resolve_metric_name("tcp_retransmission_count").value == "adv_tcpretrans_count"  # type: ignore[union-attr]
    assert resolve_metric_name("networkobservability_adv_drop_bytes").value == "adv_drop_bytes"  # type: ignore[union-attr]
    assert resolve_metric_name("node_apiserver_latency") is None
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("") is None
    assert parse_duration("0s") is None


def test_local_context_forward_each_side_once_with_pod_labels() -> None:
    fm, host = processor(
        {
            "metrics": [
                {"metricName": "forward_count", "sourceLabels": ["ip", "namespace", "podname", "workload", "service",
                                                                  "port", "zone"]},
                {"metricName": "forward_bytes", "sourceLabels": ["podname"]},
            ]
        }
    )
    proc_batch = make(4)
    row(proc_batch, 0, 0, 1, packets=3, bytes=300)  # a -> b: both local: egress a, ingress b
    row(proc_batch, 1, 0, 2, packets=2, bytes=200)  # a -> c: c not local: egress a only
    row(proc_batch, 2, -1, 1, packets=7, bytes=700, dport=443)  # unknown -> b: ingress b only
    row(proc_batch, 3, 2, -1, packets=100, bytes=1)  # c -> unknown: nothing local
    fm.consume_flows(proc_batch)
    assert labels_of(host, "adv_forward_count") == (
        "direction", "ip", "namespace", "podname", "workload_kind", "workload_name", "service", "port", "zone",
    )
    assert series(host, "adv_forward_count") == {
        ("egress", "198.18.0.1", "ns1", "a", "Deployment", "web", "web-svc", "40000", "z1"): 5.0,
        ("ingress", "198.18.0.2", "ns2", "b", "unknown", "unknown", "unknown", "80", "unknown"): 3.0,
        ("ingress", "198.18.0.2", "ns2", "b", "unknown", "unknown", "unknown", "443", "unknown"): 7.0,
    }
    assert series(host, "adv_forward_bytes") == {("egress", "a"): 500.0, ("ingress", "b"): 1000.0}


def test_is_reply_and_reply_counters() -> None:
    proc, host = processor(
        {"metrics": [{"metricName": "forward_count", "sourceLabels": ["podname"], "additionalLabels": ["is_reply"]}]}
    )
    batch = make(2)
    # request a->b; its reply columns repeat what the b->a rows report, so they are never counted
    row(batch, 0, 0, 1, packets=4, bytes=40, reply_packets=6, reply_bytes=60)
    row(batch, 1, 1, 0, packets=1, bytes=10, is_reply=1, direction=Direction.INGRESS)  # a reply row b->a
    proc.consume_flows(batch)
    assert labels_of(host, "adv_forward_count") == ("direction", "podname", "is_reply")
    assert series(host, "adv_forward_count") == {
        ("egress", "a", "false"): 4.0,
        ("ingress", "b", "false"): 4.0,
        ("egress", "b", "true"): 1.0,
        ("ingress", "a", "true"): 1.0,
    }


def test_remote_context_source_destination_labels() -> None:
    proc, host = processor(
        {
            "remote_context": True,
            "metrics": [
                {
                    "metricName": "forward_count",
                    "sourceLabels": ["ip", "podname"],
                    "destinationLabels": ["namespace", "port"],
                    "additionalLabels": ["is_reply"],
                },
                {"metricName": "drop_count", "sourceLabels": ["podname"], "destinationLabels": ["podname"]},
                {"metricName": "drop_bytes", "sourceLabels": ["podname"], "destinationLabels": ["podname"]},
            ],
        }
    )
    reason = STRINGS.intern("NETFILTER_DROP")
    batch = make(5)
    row(batch, 0, 0, 2, packets=2, bytes=20)
    row(batch, 1, 0, 2, packets=3, bytes=30)
    row(batch, 2, -1, 1, packets=1, bytes=10, direction=Direction.INGRESS, is_reply=1, dport=53, proto=17)
    row(batch, 3, 0, 1, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=reason, packets=1, bytes=60)
    row(batch, 4, 0, 1, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=reason, packets=0, bytes=40)
    proc.consume_flows(batch)
    assert labels_of(host, "adv_forward_count") == (
        "direction", "source_ip", "source_podname", "destination_namespace", "destination_port", "is_reply",
    )
    assert series(host, "adv_forward_count") == {
        ("egress", "198.18.0.1", "a", "ns1", "80", "false"): 5.0,
        ("ingress", "198.19.0.9", "unknown", "ns2", "53", "true"): 1.0,
    }
    assert labels_of(host, "adv_drop_count") == ("reason", "direction", "source_podname", "destination_podname")
    assert series(host, "adv_drop_count") == {("NETFILTER_DROP", "egress", "a", "b"): 2.0}
    assert series(host, "adv_drop_bytes") == {("NETFILTER_DROP", "egress", "a", "b"): 100.0}


def test_drops_local_tcpflags_and_retrans() -> None:
    proc, host = processor(
        {
            "metrics": [
                {"metricName": "drop_count", "sourceLabels": ["podname"]},
                {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"]},
                {"metricName": "tcp_retransmission_count", "sourceLabels": ["namespace"]},
            ]
        }
    )
    reason = STRINGS.intern("NO_SOCKET")
    batch = make(4)
    flags = np.zeros(len(TcpFlag), dtype=np.uint32)
    flags[TcpFlag.SYN] = 1
    flags[TcpFlag.ACK] = 5
    row(batch, 0, 0, 1, packets=6, bytes=600, tcp_flags=flags)
    row(batch, 1, 2, 0, packets=1, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=reason,
        direction=Direction.INGRESS)
    row(batch, 2, 0, 2, event=Event.RETRANSMIT, retransmits=3)
    row(batch, 3, 1, 0, event=Event.RETRANSMIT, packets=1)  # retransmits 0 -> counts one
    proc.consume_flows(batch)
    assert series(host, "adv_drop_count") == {("NO_SOCKET", "ingress", "a"): 1.0}
    assert labels_of(host, "adv_tcpflags_count") == ("flag", "podname")
    assert series(host, "adv_tcpflags_count") == {
        ("SYN", "a"): 1.0, ("ACK", "a"): 5.0, ("SYN", "b"): 1.0, ("ACK", "b"): 5.0,
    }
    assert series(host, "adv_tcpretrans_count") == {
        ("egress", "ns1"): 3.0,  # a -> c (c not local)
        ("egress", "ns2"): 1.0,  # b -> a
        ("ingress", "ns1"): 1.0,  # into a
    }


def test_unknown_drop_reasons_share_one_series() -> None:
    """Reason id 0 and ids STRINGS does not know both read ``unknown``: one series, both counted."""
    proc, host = processor(
        {"remote_context": True,
         "metrics": [{"metricName": "drop_count", "sourceLabels": ["namespace"], "destinationLabels": ["namespace"]}]}
    )
    batch = make(3)
    row(batch, 0, 0, 2, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=0, packets=2)
    row(batch, 1, 0, 2, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=4_000_000_000, packets=3)
    row(batch, 2, 1, 0, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=0, packets=1)  # ns2 -> ns1
    proc.consume_flows(batch)
    assert series(host, "adv_drop_count") == {
        ("unknown", "egress", "ns1", "ns1"): 5.0,
        ("unknown", "egress", "ns2", "ns1"): 1.0,
    }


def _dns_batch() -> FlowBatch:
    batch = make(4)
    row(batch, 0, 0, -1, event=Event.DNS, verdict=Verdict.FORWARDED, proto=17, dport=53, dns_qtype=1)
    row(batch, 1, 0, -1, event=Event.DNS, verdict=Verdict.FORWARDED, proto=17, dport=53, dns_qtype=1)
    row(batch, 2, -1, 0, event=Event.DNS, verdict=Verdict.FORWARDED, proto=17, sport=53, dport=40000,
        direction=Direction.INGRESS, dns_qtype=1, dns_is_response=1, dns_answer_count=2, dns_latency_us=1500)
    row(batch, 3, 0, 1, event=Event.DNS, verdict=Verdict.FORWARDED, proto=17, dport=53,  # both local, egress
        dns_qtype=28, direction=Direction.EGRESS)
    batch.dns = [
        {"query": "example.test.", "query_type": "A"},
        {"query": "example.test.", "query_type": "A"},
        {"query": "example.test.", "query_type": "A", "answers": ["198.18.5.1", "198.18.5.2"]},
        {"query": "v6.test."},
    ]
    return batch


def test_dns_request_response_and_latency_histogram() -> None:
    proc, host = processor(
        {
            "metrics": [
                {"metricName": "dns_request_count", "sourceLabels": ["podname"]},
                {"metricName": "dns_response_count", "sourceLabels": ["podname"]},
                {"metricName": "dns_latency_ms", "sourceLabels": ["podname"]},
            ],
            "dns_latency_buckets_ms": [1, 2, 5],
        }
    )
    proc.consume_flows(_dns_batch())
    assert labels_of(host, "adv_dns_request_count") == ("query_type", "query", "podname")
    assert series(host, "adv_dns_request_count") == {
        ("A", "example.test.", "a"): 2.0,
        ("AAAA", "v6.test.", "a"): 1.0,  # both local and egress: counted once, for the source pod
    }
    assert labels_of(host, "adv_dns_response_count") == (
        "return_code", "query_type", "query", "response", "num_response", "podname",
    )
    assert series(host, "adv_dns_response_count") == {
        ("NOERROR", "A", "example.test.", "198.18.5.1,198.18.5.2", "2", "a"): 1.0,
    }
    hist = series(host, "adv_dns_latency_ms")
    value = hist[("NOERROR", "A", "a")]
    assert isinstance(value, HistogramValue)
    assert value.bucket_counts == [0, 1, 0, 0] and value.count == 1 and value.total == pytest.approx(1.5)


def test_namespace_filter_and_hook() -> None:
    calls: list[dict[str, Any]] = []
    proc = FlowMetricsProcessor(
        CreateSettings("flowmetrics", "processor"),
        FlowMetricsConfig.model_validate(
            {"metrics": [{"metricName": "forward_count", "sourceLabels": ["podname"]}],
             "namespaces": {"exclude": ["ns2"]}}
        ),
        None,
        namespace_filter=lambda **kw: calls.append(kw),
    )
    host = TestHost()
    proc.start(host)
    assert calls == [{"include": [], "exclude": ["ns2"]}]
    batch = make(1)
    row(batch, 0, 0, 1, packets=1)
    proc.consume_flows(batch)
    assert series(host, "adv_forward_count") == {("egress", "a"): 1.0}  # b's namespace is excluded


def test_passes_batches_on_and_start_shutdown_idempotent() -> None:
    sink = CollectingConsumer()
    proc = FACTORY.create(CreateSettings("flowmetrics", "processor"), FlowMetricsConfig(), sink)
    host = TestHost()
    proc.shutdown()  # before start: fine
    proc.start(host)
    proc.start(host)
    batch = make(1)
    row(batch, 0, 0, 1, packets=1)
    proc.consume_flows(batch)  # type: ignore[attr-defined]
    assert sink.batches == [batch]
    proc.shutdown()
    proc.shutdown()


def test_ttl_expiry() -> None:
    proc, host = processor({"metrics": [{"metricName": "forward_count", "sourceLabels": ["podname"], "ttl": "1s"}]})
    family = host.metrics.get(P + "adv_forward_count")
    assert family is not None and family.ttl_seconds == 1.0
    batch = make(1)
    row(batch, 0, 0, 1, packets=1)
    proc.consume_flows(batch)
    assert len(family) == 2
    assert family.expire(now=time.monotonic() + 0.5) == 0
    assert family.expire(now=time.monotonic() + 2) == 2
    expired = host.metrics.get("controlplane_networkobservability_expired_metrics_counter")
    assert expired is not None
    proc.consume_flows(batch)
    host.metrics.expire()  # nothing old yet
    assert len(family) == 2


def test_forget_pods_removes_series_by_name_and_ip() -> None:
    proc, host = processor(
        {
            "remote_context": True,
            "metrics": [
                {"metricName": "forward_count", "sourceLabels": ["podname"], "destinationLabels": ["ip"]},
            ],
        }
    )
    batch = make(3)
    row(batch, 0, 0, 1, packets=1)
    row(batch, 1, 1, 2, packets=1)
    row(batch, 2, 2, 0, packets=1)
    proc.consume_flows(batch)
    assert len(series(host, "adv_forward_count")) == 3
    assert proc.forget_pods(["a"]) == 1  # source_podname a
    assert proc.forget_pods(["198.18.1.3"]) == 1  # destination_ip of c (b -> c)
    assert set(series(host, "adv_forward_count")) == {("egress", "c", "198.18.0.1")}
    # delayed removal happens at the first batch or scrape after the delay
    assert proc.forget_pods(["c"], delay_seconds=0.05) == 0
    assert len(series(host, "adv_forward_count")) == 1
    time.sleep(0.06)
    host.metrics.collect()
    assert series(host, "adv_forward_count") == {}


def test_series_budget_folds_into_overflow_and_counts() -> None:
    proc, host = processor(
        {"max_series_per_metric": 2, "metrics": [{"metricName": "forward_count", "sourceLabels": ["port"]}]}
    )
    batch = make(5)
    for i in range(5):
        row(batch, i, 0, 2, packets=1, sport=1000 + i)
    proc.consume_flows(batch)
    values = series(host, "adv_forward_count")
    assert len(values) == 3
    assert values[(OVERFLOW_LABEL_VALUE, OVERFLOW_LABEL_VALUE)] == 3.0
    folded = host.metrics.get("controlplane_networkobservability_overflow_series_counter")
    assert folded is not None
    assert folded.value((P + "adv_forward_count",)) == 3.0
    assert sum(v for v in values.values()) == 5.0  # nothing lost


def test_reconfiguration_removes_and_relabels() -> None:
    proc, host = processor({"metrics": [{"metricName": "forward_count", "sourceLabels": ["podname"]},
                                        {"metricName": "drop_count", "sourceLabels": ["podname"]}]})
    batch = make(1)
    row(batch, 0, 0, 1, packets=1)
    proc.consume_flows(batch)
    from retina_otel.processors.flowmetrics import build_plan

    proc.apply_plan(build_plan([{"metricName": "forward_count", "sourceLabels": ["namespace"], "ttl": "5m"}],
                               remote=False, max_series=10))
    assert host.metrics.get(P + "adv_drop_count") is None
    family = host.metrics.get(P + "adv_forward_count")
    assert family is not None and family.label_names == ("direction", "namespace") and len(family) == 0
    assert family.ttl_seconds == 300.0 and family.max_series == 10
    proc.consume_flows(batch)
    assert series(host, "adv_forward_count") == {("egress", "ns1"): 1.0, ("ingress", "ns2"): 1.0}


def test_annotation_defaults() -> None:
    proc, host = processor({"enable_annotations": True})
    assert labels_of(host, "adv_forward_count") == (
        "direction", "ip", "namespace", "podname", "workload_kind", "workload_name",
    )
    assert host.metrics.get(P + "adv_dns_response_count") is not None
    assert host.metrics.get(P + "adv_tcpretrans_count") is not None
    assert proc.plan.source == "annotations"


def test_pod_level_disabled_and_node_metrics() -> None:
    proc, host = processor({"pod_level": False, "node_metrics": True,
                            "metrics": [{"metricName": "forward_count", "sourceLabels": ["podname"]}]})
    assert host.metrics.get(P + "adv_forward_count") is None
    reason = STRINGS.intern("NETFILTER_DROP")
    batch = make(3)
    row(batch, 0, 0, 1, packets=2, bytes=20, reply_packets=1, reply_bytes=5)
    row(batch, 1, 0, 1, event=Event.DROP, verdict=Verdict.DROPPED, drop_reason=reason, packets=1, bytes=9)
    row(batch, 2, 0, -1, event=Event.DNS, proto=17, dport=53)
    proc.consume_flows(batch)
    assert series(host, "forward_count") == {("egress",): 2.0}  # reply columns are never counted
    assert series(host, "forward_bytes") == {("egress",): 20.0}
    assert series(host, "drop_count") == {("NETFILTER_DROP", "egress"): 1.0}
    assert series(host, "dns_request_count") == {(): 1.0}


def test_large_batch_matches_naive_reference() -> None:
    """The vectorised path against a per-row dict loop on random data (local and remote context)."""
    rng = np.random.default_rng(7)
    n_pods = 50
    entries = [
        {"k8s.pod.name": f"p{i}", "k8s.namespace.name": f"ns{i % 4}", "retina.endpoint.local": i % 3 != 0}
        for i in range(n_pods)
    ]
    n = 5000
    batch = make(n, entries)
    r = batch.records
    r["event"] = Event.FLOW
    r["verdict"] = Verdict.FORWARDED
    r["proto"] = 6
    r["src_endpoint"] = rng.integers(-1, n_pods, n)
    r["dst_endpoint"] = rng.integers(-1, n_pods, n)
    r["direction"] = rng.integers(1, 3, n)
    r["is_reply"] = rng.integers(0, 2, n)
    r["packets"] = rng.integers(1, 10, n)
    ips = [ip_to_bytes(f"198.18.{i // 250}.{i % 250 + 1}") for i in range(n_pods + 1)]
    for i in range(n):
        r["src_ip"][i] = ips[int(r["src_endpoint"][i])]
        r["dst_ip"][i] = ips[int(r["dst_endpoint"][i])]
    for remote in (False, True):
        proc, host = processor(
            {
                "remote_context": remote,
                "metrics": [{"metricName": "forward_count", "sourceLabels": ["ip", "podname"],
                             "destinationLabels": ["namespace"], "additionalLabels": ["is_reply"]}],
            }
        )
        proc.consume_flows(batch)
        expected: dict[tuple[str, ...], float] = {}
        for i in range(n):
            s, d = int(r["src_endpoint"][i]), int(r["dst_endpoint"][i])
            rep = "true" if r["is_reply"][i] else "false"
            pk = float(r["packets"][i])
            src_ip = ip_text_of(ips, s)
            if remote:
                key = (("unknown", "ingress", "egress")[int(r["direction"][i])], src_ip,
                       entries[s]["k8s.pod.name"] if s >= 0 else "unknown",
                       entries[d]["k8s.namespace.name"] if d >= 0 else "unknown", rep)
                expected[key] = expected.get(key, 0.0) + pk
                continue
            if s >= 0 and entries[s]["retina.endpoint.local"]:
                key = ("egress", src_ip, entries[s]["k8s.pod.name"], rep)
                expected[key] = expected.get(key, 0.0) + pk
            if d >= 0 and entries[d]["retina.endpoint.local"]:
                key = ("ingress", ip_text_of(ips, d), entries[d]["k8s.pod.name"], rep)
                expected[key] = expected.get(key, 0.0) + pk
        assert series(host, "adv_forward_count") == expected


def ip_text_of(ips: list[bytes], index: int) -> str:
    from retina_otel.flows import bytes_to_ip

    return str(bytes_to_ip(ips[index]))
