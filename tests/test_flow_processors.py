"""filter, transform, ratelimit and networks on columnar batches (no kernel needed)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from retina_otel.component import CreateSettings
from retina_otel.config import ConfigError, parse_config
from retina_otel.flows import STRINGS, EndpointTable, FlowBatch, ip_to_bytes
from retina_otel.flowschema import record_attributes
from retina_otel.processors.filter import FilterConfig, FilterProcessor
from retina_otel.processors.networks import NetworksConfig, NetworksProcessor
from retina_otel.processors.ratelimit import RateLimitConfig, RateLimitProcessor, TokenBucket
from retina_otel.processors.transform import TransformConfig, TransformProcessor
from retina_otel.receivers.synthetic import make_batch
from retina_otel.testing import CollectingConsumer, TestHost


def _batch() -> FlowBatch:
    """Six rows: TCP to 8080 and 443, UDP to 53, ICMP, IPv6; two pods known to the endpoint table."""
    batch = FlowBatch.empty(6, receiver="test")
    r = batch.records
    rows = [
        ("198.18.0.1", "198.18.0.2", 6, 40000, 8080, 1),
        ("198.18.0.2", "198.18.0.1", 6, 8080, 40000, 2),
        ("198.18.0.1", "203.0.113.9", 6, 40001, 443, 3),
        ("198.18.0.1", "198.18.5.5", 17, 40002, 53, 4),
        ("198.18.0.1", "198.19.1.1", 1, 8, 0, 5),
        ("2001:db8::1", "2001:db8:1::2", 6, 40003, 443, 6),
    ]
    for i, (src, dst, proto, sport, dport, packets) in enumerate(rows):
        r["src_ip"][i] = ip_to_bytes(src)
        r["dst_ip"][i] = ip_to_bytes(dst)
        r["proto"][i], r["src_port"][i], r["dst_port"][i], r["packets"][i] = proto, sport, dport, packets
        r["ip_version"][i] = 6 if ":" in src else 4
    r["event"] = 1
    batch.endpoints = EndpointTable(
        entries=(
            MappingProxyType({"k8s.namespace.name": "shop", "k8s.pod.name": "cart-1", "retina.endpoint.kind": "pod"}),
            MappingProxyType(
                {"k8s.namespace.name": "kube-system", "k8s.pod.name": "dns-1", "retina.endpoint.kind": "pod"}
            ),
        )
    )
    r["src_endpoint"] = [0, 1, 0, 0, 0, -1]
    r["dst_endpoint"] = [1, 0, -1, -1, -1, -1]
    return batch


def _kept(config: dict[str, Any], batch: FlowBatch | None = None) -> list[int]:
    batch = batch or _batch()
    proc = FilterProcessor(
        CreateSettings("filter", "processor"), FilterConfig.model_validate(config), CollectingConsumer()
    )
    out = proc.filter(batch)
    return [] if out is None else out.records["packets"].tolist()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"include": [{"network.transport": "tcp"}]}, [1, 2, 3, 6]),
        ({"include": [{"destination.port": [53, 443]}]}, [3, 4, 6]),
        ({"include": [{"destination.port": {"range": [1, 1023]}}]}, [3, 4, 6]),  # ICMP rows have no port
        ({"include": [{"destination.address": {"cidr": "198.18.0.0/16"}}]}, [1, 2, 4]),
        ({"include": [{"destination.address": {"cidr": ["2001:db8:1::/48", "203.0.113.0/24"]}}]}, [3, 6]),
        ({"include": [{"source.address": "198.18.0.2"}]}, [2]),
        ({"include": [{"destination.k8s.namespace.name": "kube-system"}]}, [1]),
        ({"include": [{"source.k8s.pod.name": {"prefix": "cart"}}]}, [1, 3, 4, 5]),
        ({"include": [{"not": {"destination.k8s.namespace.name": "kube-system"}}]}, [2, 3, 4, 5, 6]),
        ({"include": [{"destination.k8s.namespace.name": {"not": {"in": ["shop", "kube-system"]}}}]}, [3, 4, 5, 6]),
        ({"include": [{"retina.flow.packets": {"min": 2, "max": 4}}]}, [2, 3, 4]),
        ({"include": [{"network.type": "ipv6"}, {"network.transport": "icmp"}]}, [5, 6]),
        ({"exclude": [{"network.transport": "udp"}, {"retina.icmp.type": 8}]}, [1, 2, 3, 6]),
        (
            {"include": [{"network.transport": "tcp", "destination.port": 443}], "exclude": [{"network.type": "ipv6"}]},
            [3],
        ),
        ({"include": [{"destination.retina.endpoint.kind": "pod"}]}, [1, 2]),
    ],
)
def test_filter_conditions(config: dict[str, Any], expected: list[int]) -> None:
    assert _kept(config) == expected


def test_filter_never_changes_its_input_and_passes_whole_batches_through() -> None:
    batch = _batch()
    batch.mark_read_only()
    before = batch.records.copy()
    proc = FilterProcessor(
        CreateSettings("filter", "processor"),
        FilterConfig.model_validate({"include": [{"network.transport": "tcp"}]}),
        CollectingConsumer(),
    )
    out = proc.filter(batch)
    assert out is not None and len(out) == 4
    assert np.array_equal(batch.records, before)
    everything = FilterProcessor(
        CreateSettings("filter", "processor"),
        FilterConfig.model_validate({"exclude": [{"network.transport": "sctp"}]}),
        CollectingConsumer(),
    )
    assert everything.filter(batch) is batch


def test_filter_on_drop_reason_and_dns_name() -> None:
    batch = _batch()
    batch.records["drop_reason"][2] = STRINGS.intern("SKB_DROP_REASON_NETFILTER_DROP")
    assert _kept({"include": [{"retina.drop.reason": {"prefix": "SKB_DROP_REASON_NETFILTER"}}]}, batch) == [3]
    batch.dns = [None, None, None, {"query": "api.shop.example."}, None, None]
    assert _kept({"include": [{"dns.question.name": {"prefix": "api."}}]}, batch) == [4]


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ({"include": [{"destination.prot": 1}]}, "processors.filter.include", "unknown attribute 'destination.prot'"),
        ({"include": [{"source.address": {"cidr": "10.0.0.0/33"}}]}, "processors.filter.include", "cidr"),
        ({"include": [{"network.transport": "tcpp"}]}, "processors.filter.include", "unknown value 'tcpp'"),
        ({"exclude": [{"destination.port": {"between": 1}}]}, "processors.filter.exclude", "unknown operator"),
        ({"include": [{"source.address": "nope"}]}, "processors.filter.include", "[0].source.address.eq: 'nope'"),
        ({"include": [{"source.address": ["198.18.0.1", "10.0.0.1/8"]}]}, "processors.filter.include", ".in: 10.0"),
        ({"include": [{"source.address": {"in": []}}]}, "processors.filter.include", "[0].source.address: an empty"),
        ({"exclude": [{"destination.port": []}]}, "processors.filter.exclude", "[0].destination.port: an empty"),
        ({"include": []}, "processors.filter.include", "leave include out to keep every row"),
        ({"drop": []}, "processors.transform", "set keep, drop or both"),
        ({"records_per_second": 0}, "processors.ratelimit.records_per_second", "greater than 0"),
        (
            {"networks": [{"name": "x", "cidrs": ["10.0.0.0/8", "nope"]}]},
            "processors.networks.networks.0.cidrs",
            "nope",
        ),
    ],
)
def test_bad_processor_config_names_the_field(body: dict[str, Any], path: str, words: str) -> None:
    kind = path.split(".")[1]
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "receivers": {"synthetic": {}},
                "processors": {kind: body},
                "exporters": {"nop": {}},
                "service": {
                    "pipelines": {"logs": {"receivers": ["synthetic"], "processors": [kind], "exporters": ["nop"]}}
                },
            },
            env={},
        )
    problems = [p for p in info.value.problems if p.path.startswith(path)]
    assert problems and words in problems[0].message, info.value.problems


def test_transform_keeps_only_listed_attributes_without_touching_rows() -> None:
    sink = CollectingConsumer()
    keep = TransformProcessor(
        CreateSettings("transform", "processor"),
        TransformConfig(
            keep=["source.address", "destination.*", "retina.flow.packets"], drop=["destination.k8s.pod.uid"]
        ),
        sink,
    )
    batch = _batch()
    keep.consume_flows(batch)
    out = sink.batches[0]
    assert out.records is batch.records and not batch.masks
    attrs = record_attributes(out, 0)
    assert set(attrs) == {
        "event.name",
        "source.address",
        "destination.address",
        "destination.port",
        "retina.flow.packets",
        "destination.k8s.namespace.name",
        "destination.k8s.pod.name",
        "destination.retina.endpoint.kind",
    }
    drop = TransformProcessor(CreateSettings("transform", "processor"), TransformConfig(drop=["source.k8s.*"]), sink)
    drop.consume_flows(batch)
    assert not [k for k in record_attributes(sink.batches[1], 0) if k.startswith("source.k8s.")]
    assert "source.address" in record_attributes(sink.batches[1], 0)


def test_token_bucket_and_lost_counts() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=100, burst=50, clock=lambda: now[0])
    assert bucket.take(80) == 50
    assert bucket.take(10) == 0
    now[0] = 0.25
    assert bucket.take(100) == 25
    now[0] = 10.0
    assert bucket.take(100) == 50  # never more than the burst

    sink = CollectingConsumer()
    host = TestHost()
    proc = RateLimitProcessor(
        CreateSettings("ratelimit/loki", "processor"), RateLimitConfig(records_per_second=1, burst=30), sink
    )
    proc.start(host)
    batch = make_batch(100)
    proc.consume_flows(batch)
    proc.consume_flows(make_batch(100))
    assert len(sink.records()) == 30
    assert np.shares_memory(sink.batches[0].records, batch.records)  # a slice, no copy
    lost = host.metrics.get("controlplane_networkobservability_lost_events_counter")
    assert lost is not None and lost.value(("ratelimit/loki", "rate_limited")) == 170


def test_networks_narrowest_match_world_and_merge_with_k8s() -> None:
    config = NetworksConfig.model_validate(
        {
            "networks": [
                {"name": "test-net", "cidrs": ["198.18.0.0/15", "2001:db8::/32"]},
                {"name": "svc-range", "cidrs": ["198.18.5.0/24"]},
            ]
        }
    )
    sink = CollectingConsumer()
    proc = NetworksProcessor(CreateSettings("networks", "processor"), config, sink)
    batch = _batch()
    proc.consume_flows(batch)
    attrs = [record_attributes(batch, i) for i in range(len(batch))]
    assert attrs[0]["source.network.name"] == "test-net" and attrs[0]["source.k8s.pod.name"] == "cart-1"
    assert attrs[0]["source.retina.endpoint.kind"] == "pod"
    assert attrs[2]["destination.retina.endpoint.kind"] == "world" and "destination.network.name" not in attrs[2]
    assert attrs[3]["destination.network.name"] == "svc-range"  # /24 inside the /15: narrowest wins
    assert attrs[3]["destination.retina.endpoint.kind"] == "network"
    assert attrs[4]["destination.network.name"] == "test-net"
    assert attrs[5]["destination.network.name"] == "test-net" and attrs[5]["source.network.name"] == "test-net"
    assert _kept({"include": [{"destination.network.name": "svc-range"}]}, batch) == [4]
    assert _kept({"include": [{"destination.retina.endpoint.kind": "world"}]}, batch) == [3]
    before = len(batch.endpoints.entries)
    proc.consume_flows(batch)  # again: already decorated entries are re-used, not duplicated per row
    assert len(batch.endpoints.entries) - before <= 4
