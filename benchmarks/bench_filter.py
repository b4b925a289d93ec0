"""filter and networks processors: flow records/s on one core, on 100,000-row enriched batches.

Batches as packetparser + k8sattributes hand them on: 1,000 pods in 20 namespaces (198.18.0.0/16) and
external addresses (203.0.113.0/24 and 2001:db8::/32 ends), TCP 60% / UDP 35% / ICMP 5%, endpoint
indices into one shared 1,000-entry table. Each row is CPU time of the calling thread (numpy here is
single-threaded) for the whole ``consume_flows`` step: evaluating the conditions and building the batch
of kept rows (or, for networks, rewriting the endpoint indices of a fresh copy of the batch).
Baseline in the same run: the simple filter as a per-row Python loop (on a 10,000-row sample).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from retina_otel.component import CreateSettings
from retina_otel.flows import EndpointTable, FlowBatch, ip_to_bytes
from retina_otel.processors.filter import FilterConfig, FilterProcessor
from retina_otel.processors.networks import NetworksConfig, NetworksProcessor
from retina_otel.testing import CollectingConsumer

N_PODS = 1000
N_NS = 20
ROWS = 100_000


def _entries() -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "k8s.pod.name": f"pod-{i}",
            "k8s.namespace.name": f"ns-{i % N_NS}",
            "retina.endpoint.kind": "pod",
            "retina.endpoint.local": i < 100,
        }
        for i in range(N_PODS)
    )


def _addresses(ids: np.ndarray) -> np.ndarray:
    """Pod i -> 198.18.(i//250).(i%250+1); ids >= N_PODS -> 203.0.113.x or 2001:db8::x (external)."""
    out = np.zeros((ids.shape[0], 16), dtype=np.uint8)
    pod = ids < N_PODS
    v4 = np.frombuffer(ip_to_bytes("198.18.0.0"), dtype=np.uint8)
    ext4 = np.frombuffer(ip_to_bytes("203.0.113.0"), dtype=np.uint8)
    ext6 = np.frombuffer(ip_to_bytes("2001:db8::"), dtype=np.uint8)
    out[:] = v4
    out[pod, 14] = (ids[pod] // 250).astype(np.uint8)
    out[pod, 15] = (ids[pod] % 250 + 1).astype(np.uint8)
    external = ~pod
    six = external & (ids % 2 == 0)
    out[external & ~six] = ext4
    out[external & ~six, 15] = (ids[external & ~six] % 250 + 1).astype(np.uint8)
    out[six] = ext6
    out[six, 15] = (ids[six] % 250 + 1).astype(np.uint8)
    return out.view("V16").ravel()


def make_batch(n: int = ROWS, seed: int = 0, entries: tuple[dict[str, Any], ...] | None = None) -> FlowBatch:
    rng = np.random.default_rng(seed)
    batch = FlowBatch.empty(n, receiver="bench")
    r = batch.records
    src = rng.integers(0, N_PODS, n)
    dst = rng.integers(0, N_PODS + 300, n)
    r["src_ip"] = _addresses(src)
    r["dst_ip"] = _addresses(dst)
    r["ip_version"] = np.where((dst >= N_PODS) & (dst % 2 == 0), 6, 4)
    kind = rng.random(n)
    r["proto"] = np.where(kind < 0.6, 6, np.where(kind < 0.95, 17, 1))
    r["src_port"] = rng.integers(32768, 61000, n)
    r["dst_port"] = rng.choice([53, 80, 443, 5432, 8080], n)
    r["packets"] = rng.integers(1, 50, n)
    r["bytes"] = r["packets"] * 120
    r["event"] = 1
    r["verdict"] = 1
    r["src_endpoint"] = src
    r["dst_endpoint"] = np.where(dst < N_PODS, dst, -1)
    batch.endpoints = EndpointTable(entries=entries if entries is not None else _entries())
    return batch


def _per_core(step: Callable[[], object], n: int, reps: int) -> float:
    step()  # warm caches (compiled predicates, per-table vectors)
    began = time.thread_time()
    for _ in range(reps):
        step()
    return n * reps / (time.thread_time() - began)


def _filter(config: dict[str, Any]) -> FilterProcessor:
    return FilterProcessor(
        CreateSettings("filter", "processor"), FilterConfig.model_validate(config), CollectingConsumer()
    )


def _networks(count: int) -> NetworksProcessor:
    nets = [{"name": f"net-{i}", "cidrs": [f"10.{i // 250}.{i % 250}.0/24"]} for i in range(count - 2)]
    nets += [{"name": "pods", "cidrs": ["198.18.0.0/16"]}, {"name": "partner", "cidrs": ["203.0.113.0/25"]}]
    config = NetworksConfig.model_validate({"networks": nets})
    return NetworksProcessor(CreateSettings("networks", "processor"), config, CollectingConsumer())


def _naive_simple(batch: FlowBatch) -> int:
    kept = 0
    for row in batch.records:
        if int(row["proto"]) == 6:
            kept += 1
    return kept


FILTERS: list[tuple[str, dict[str, Any]]] = [
    ("simple: network.transport tcp", {"include": [{"network.transport": "tcp"}]}),
    ("port set", {"include": [{"destination.port": [53, 443]}]}),
    (
        "CIDR + port range",
        {"include": [{"destination.address": {"cidr": "198.18.0.0/15"}, "destination.port": {"range": [1, 1023]}}]},
    ),
    (
        "k8s namespace set (after enrichment)",
        {"include": [{"destination.k8s.namespace.name": {"in": ["ns-1", "ns-2", "ns-3"]}}]},
    ),
    (
        "include + exclude with not",
        {
            "include": [{"network.transport": ["tcp", "udp"]}],
            "exclude": [{"destination.k8s.namespace.name": "ns-0", "not": {"destination.port": 53}}],
        },
    ),
]


def run(quick: bool) -> dict[str, Any]:
    reps = 3 if quick else 20
    entries = _entries()
    batch = make_batch(entries=entries)
    batch.mark_read_only()  # as the fan-out shares it: the filter must not need to write
    rows: list[dict[str, Any]] = []
    for name, config in FILTERS:
        proc = _filter(config)
        kept = len(proc.filter(batch) or ())
        rate = _per_core(lambda p=proc: p.filter(batch), ROWS, reps)
        rows.append({"what": f"filter, {name}", "kept": f"{kept / ROWS:.0%}", "records_per_s_core": f"{rate:,.0f}"})
    sample = make_batch(10_000, entries=entries)
    naive = _per_core(lambda: _naive_simple(sample), 10_000, 1 if quick else 3)
    rows.append(
        {
            "what": "baseline: the simple test as a per-row Python loop (reads one field, builds no batch)",
            "kept": "",
            "records_per_s_core": f"{naive:,.0f}",
        }
    )

    copies_needed = reps + 1
    for count in (10, 100):
        proc = _networks(count)
        copies = iter([batch.copy() for _ in range(copies_needed)])
        rate = _per_core(lambda p=proc, c=copies: p.decorate(next(c)), ROWS, reps)
        rows.append({"what": f"networks, {count} named CIDRs", "kept": "", "records_per_s_core": f"{rate:,.0f}"})
    copy_rate = _per_core(batch.copy, ROWS, reps)
    rows.append(
        {
            "what": "(for scale) copying the batch, what a shared mutating pipeline pays",
            "kept": "",
            "records_per_s_core": f"{copy_rate:,.0f}",
        }
    )

    networks = _networks(10)
    both = _filter(
        {"include": [{"destination.retina.endpoint.kind": "world"}, {"destination.network.name": "partner"}]}
    )
    copies = [batch.copy() for _ in range(copies_needed)]
    it2 = iter(copies)

    def pipeline() -> object:
        b = next(it2)
        networks.decorate(b)
        return both.filter(b)

    rate = _per_core(pipeline, ROWS, reps)
    rows.append(
        {
            "what": "networks (10 CIDRs) then filter on world/network name",
            "kept": "",
            "records_per_s_core": f"{rate:,.0f}",
        }
    )
    simple = float(rows[0]["records_per_s_core"].replace(",", ""))
    return {
        "rows": rows,
        "targets": {"simple filter >= 5M records/s/core": simple >= 5e6},
        "notes": f"{ROWS:,}-row batches, {reps} repetitions each, CPU time of one thread.",
    }
