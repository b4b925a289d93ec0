"""flowmetrics throughput: flow records/s on one core, and the cost of rendering 50,000 series.

Realistic mix: 1,000 pods in 20 namespaces (100 on this node), 100,000-row batches: 85% TCP/UDP forward
rows between pods and to external addresses (half with reply counters), 5% drops, 5% retransmissions,
5% DNS. Local context with Retina's annotation defaults (every adv metric, ip/namespace/podname/workload)
and, separately, remote context. Each row also shows the pre-rewrite number (``before_us_per_record``).
Baselines in the same run: a naive per-row dict-increment loop computing
the same forward counter, and the OpenTelemetry SDK ``counter.add`` per row (on a small sample).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from retina_otel.component import CreateSettings
from retina_otel.flows import STRINGS, EndpointTable, Event, FlowBatch, Verdict, bytes_to_ip, ip_to_bytes
from retina_otel.processors.flowmetrics import FlowMetricsConfig, FlowMetricsProcessor
from retina_otel.testing import TestHost

N_PODS = 1000
N_LOCAL = 100
N_NS = 20


def _pod_ip(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def _entries() -> list[dict[str, Any]]:
    return [
        {
            "k8s.pod.name": f"pod-{i}",
            "k8s.namespace.name": f"ns-{i % N_NS}",
            "k8s.workload.kind": "Deployment",
            "k8s.workload.name": f"app-{i // 4}",
            "retina.endpoint.kind": "pod",
            "retina.endpoint.local": i < N_LOCAL,
        }
        for i in range(N_PODS)
    ]


def _batch(n: int, seed: int, entries: list[dict[str, Any]] | None) -> FlowBatch:
    """A batch with IPs set; endpoint indices filled here only when ``entries`` is given."""
    rng = np.random.default_rng(seed)
    batch = FlowBatch.empty(n, receiver="bench")
    r = batch.records
    kind = rng.random(n)
    # 70% of flows touch a local pod on one side; the other side a pod anywhere or an external address
    local_side = rng.integers(0, N_LOCAL, n)
    other = rng.integers(0, N_PODS + 200, n)  # >= N_PODS: 200 external addresses
    swap = rng.random(n) < 0.5
    src = np.where(swap, other, local_side)
    dst = np.where(swap, local_side, other)
    ip_table = np.array(
        [ip_to_bytes(_pod_ip(i)) for i in range(N_PODS)] + [ip_to_bytes(f"198.19.{i // 250}.{i % 250 + 1}")
                                                              for i in range(200)],
        dtype="V16",
    )
    r["src_ip"] = ip_table[src]
    r["dst_ip"] = ip_table[dst]
    r["ip_version"] = 4
    r["proto"] = np.where(rng.random(n) < 0.8, 6, 17)
    r["src_port"] = rng.integers(30000, 60000, n)
    r["dst_port"] = rng.choice(np.array([80, 443, 8080, 5432, 6379]), n)
    r["direction"] = np.where(swap, 1, 2)
    r["observation_point"] = 1
    r["event"] = Event.FLOW
    r["verdict"] = Verdict.FORWARDED
    r["packets"] = rng.integers(1, 50, n)
    r["bytes"] = r["packets"] * rng.integers(60, 1500, n)
    replies = rng.random(n) < 0.5
    r["reply_packets"] = np.where(replies, rng.integers(1, 50, n), 0)
    r["reply_bytes"] = r["reply_packets"] * 100
    r["tcp_flags"][:, 3] = np.where(r["proto"] == 6, r["packets"], 0)  # ACK
    r["tcp_flags"][:, 1] = (rng.random(n) < 0.1) & (r["proto"] == 6)  # SYN
    drop = (kind >= 0.85) & (kind < 0.90)
    r["event"][drop] = Event.DROP
    r["verdict"][drop] = Verdict.DROPPED
    reasons = np.array([STRINGS.intern(x) for x in ("NETFILTER_DROP", "NO_SOCKET", "TCP_INVALID_SEQUENCE")])
    r["drop_reason"][drop] = reasons[rng.integers(0, 3, int(drop.sum()))]
    retrans = (kind >= 0.90) & (kind < 0.95)
    r["event"][retrans] = Event.RETRANSMIT
    r["retransmits"][retrans] = 1
    dns = kind >= 0.95
    r["event"][dns] = Event.DNS
    r["proto"][dns] = 17
    r["dns_is_response"][dns] = rng.random(int(dns.sum())) < 0.5
    r["dns_qtype"][dns] = 1
    r["dns_latency_us"][dns] = rng.integers(100, 20000, int(dns.sum()))
    names = [f"svc-{i}.ns-{i % N_NS}.svc.cluster.local." for i in range(50)]
    extra: list[Any] = [None] * n
    for i in np.flatnonzero(dns).tolist():
        extra[i] = {"query": names[i % 50], "query_type": "A", "answers": ["198.18.200.1"]}
    batch.dns = extra
    if entries is not None:
        batch.endpoints = EndpointTable(entries=entries)
        r["src_endpoint"] = np.where(src < N_PODS, src, -1)
        r["dst_endpoint"] = np.where(dst < N_PODS, dst, -1)
    return batch


def _processor(config: dict[str, Any], host: TestHost) -> FlowMetricsProcessor:
    proc = FlowMetricsProcessor(CreateSettings("flowmetrics", "processor"), FlowMetricsConfig.model_validate(config),
                                None)
    proc.start(host)
    return proc


# us/record of the same cases before the aggregator rewrite (benchmarks/results/flowmetrics.json at commit
# 01cb523, same machine), shown side by side with each run's numbers.
_BEFORE_US = {
    "local": 1.184,
    "remote": 14.291,
    "forward": 0.508,
    "pipeline": 0.979,
}


def _rate(fn: Any, batches: list[FlowBatch], repeat: int) -> float:
    """Records per CPU-second of this process: the median of ``repeat`` passes over ``batches`` (the
    machine may be busy with other work; the median of several passes is steadier than one long pass)."""
    fn(batches[0])  # warm-up: endpoint index, families
    rates: list[float] = []
    for _ in range(repeat):
        total = 0
        started = time.process_time()
        for b in batches:
            fn(b)
            total += len(b)
        rates.append(total / max(time.process_time() - started, 1e-9))
    return sorted(rates)[len(rates) // 2]


def _row(case: str, rate: float, before: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case, "records_per_s": int(rate), "us_per_record": round(1e6 / rate, 3)}
    if before is not None:
        row["before_us_per_record"] = _BEFORE_US[before]
    return row


def _naive_forward(batch: FlowBatch, counts: dict[tuple[str, ...], float]) -> None:
    """Baseline: per-row Python with a dict increment, adv_forward_count local context only."""
    entries = batch.endpoints.entries
    r = batch.records
    for i in range(len(batch)):
        if r["event"][i] != Event.FLOW or r["verdict"][i] != Verdict.FORWARDED:
            continue
        packets = float(r["packets"][i])
        for side, direction in (("src", "egress"), ("dst", "ingress")):
            e = int(r[f"{side}_endpoint"][i])
            if e >= 0 and entries[e]["retina.endpoint.local"]:
                ent = entries[e]
                key = (direction, str(bytes_to_ip(r[f"{side}_ip"][i])), ent["k8s.namespace.name"],
                       ent["k8s.pod.name"], ent["k8s.workload.kind"], ent["k8s.workload.name"])
                counts[key] = counts.get(key, 0.0) + packets


def _otel_sdk_rate(batch: FlowBatch, rows: int) -> float:
    from opentelemetry.sdk.metrics import MeterProvider

    meter = MeterProvider().get_meter("bench")
    counter = meter.create_counter("networkobservability_adv_forward_count")
    entries = batch.endpoints.entries
    r = batch.records
    started = time.process_time()
    for i in range(rows):
        e = max(int(r["src_endpoint"][i]), 0)
        ent = entries[e]
        counter.add(int(r["packets"][i]), {"direction": "egress", "ip": "198.18.0.1", "namespace":
                                            ent["k8s.namespace.name"], "podname": ent["k8s.pod.name"],
                                            "workload_name": ent["k8s.workload.name"]})
    return rows / max(time.process_time() - started, 1e-9)


def _k8s_pipeline_rate(batches: list[FlowBatch], repeat: int) -> tuple[float, str]:
    """k8sattributes (file source, 1,000 pods) -> flowmetrics, annotation defaults."""
    try:
        from retina_otel.processors.k8sattributes import FACTORY as K8S
    except ImportError as exc:
        return 0.0, f"k8sattributes unavailable: {exc}"
    lines = ["nodes:", "  - {name: node-a, ips: [198.18.250.1], zone: z1}", "  - {name: node-b, ips: [198.18.250.2]}",
             "endpoints:"]
    for i in range(N_PODS):
        lines.append(f"  - {{name: pod-{i}, namespace: ns-{i % N_NS}, ips: [{_pod_ip(i)}], "
                     f"workload: {{kind: Deployment, name: app-{i // 4}}}, "
                     f"node: {'node-a' if i < N_LOCAL else 'node-b'}}}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "endpoints.yaml"
        path.write_text("\n".join(lines) + "\n")
        host = TestHost(node_name="node-a")
        flow = _processor({"enable_annotations": True}, host)
        k8s = K8S.create(CreateSettings("k8sattributes", "processor"),
                         K8S.config_model.model_validate({"source": "file", "file_path": str(path),
                                                          "node_name": "node-a"}), flow)
        k8s.start(host)
        try:
            deadline = time.monotonic() + 10
            cache = getattr(k8s, "cache", None)
            while cache is not None and not cache.wait_synced(0.1) and time.monotonic() < deadline:
                pass
            consume = k8s.consume_flows  # type: ignore[attr-defined]
            rate = _rate(consume, batches, repeat)
            family = host.metrics.get("networkobservability_adv_forward_count")
            note = f"{len(family) if family else 0} adv_forward_count series"
        finally:
            k8s.shutdown()
            flow.shutdown()
    return rate, note


def _render_rows(quick: bool) -> list[dict[str, Any]]:
    from retina_otel.metrics.store import MetricStore

    store = MetricStore()
    family = store.counter("networkobservability_adv_forward_count", "bench",
                           ("direction", "ip", "namespace", "podname", "workload_kind", "workload_name"))
    family.add_many(
        (("egress" if i % 2 else "ingress", _pod_ip(i // 2 % 10000), f"ns-{i % 20}", f"pod-{i // 2}",
           "Deployment", f"app-{i // 8}"), float(i)) for i in range(50_000)
    )
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    store.collect()
    rows.append({"case": "MetricStore.collect() of 50,000 series", "seconds": round(time.perf_counter() - started, 4)})
    try:
        from retina_otel.exporters.prometheus.exporter import render
    except ImportError:
        return rows
    started = time.perf_counter()
    text = render(store)
    rows.append({"case": "prometheus render of 50,000 series", "seconds": round(time.perf_counter() - started, 4),
                 "bytes": len(text)})
    return rows


def run(quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    repeat = 1 if quick else 5
    entries = _entries()
    batches = [_batch(n, seed, entries) for seed in range(2)]
    rows: list[dict[str, Any]] = []

    host = TestHost()
    local = _processor({"enable_annotations": True}, host)
    rate = _rate(local.consume_flows, batches, repeat)
    rows.append(_row("flowmetrics, local context, annotation defaults (all adv metrics)", rate, "local"))

    host = TestHost()
    remote = _processor({"enable_annotations": True, "remote_context": True}, host)
    rate = _rate(remote.consume_flows, batches, repeat)
    rows.append(_row("flowmetrics, remote context, annotation defaults", rate, "remote"))

    host = TestHost()
    fwd = _processor({"metrics": [{"metricName": "forward_count",
                                   "sourceLabels": ["ip", "namespace", "podname", "workload"]}]}, host)
    rate = _rate(fwd.consume_flows, batches, repeat)
    rows.append(_row("flowmetrics, adv_forward_count only (same as baseline)", rate, "forward"))

    counts: dict[tuple[str, ...], float] = {}
    sample = _batch(n // 10, 9, entries)
    started = time.process_time()
    _naive_forward(sample, counts)
    naive = len(sample) / (time.process_time() - started)
    rows.append({"case": "baseline: per-row Python dict increment (adv_forward_count only)",
                 "records_per_s": int(naive), "us_per_record": round(1e6 / naive, 3)})

    sdk = _otel_sdk_rate(sample, 2000 if quick else 10_000)
    rows.append({"case": "baseline: OpenTelemetry SDK counter.add per row (5 attributes)",
                 "records_per_s": int(sdk), "us_per_record": round(1e6 / sdk, 3)})

    raw = [_batch(n, seed, None) for seed in range(2)]
    pipeline, note = _k8s_pipeline_rate(raw, repeat)
    if pipeline:
        rows.append(_row(f"k8sattributes + flowmetrics, local, annotation defaults ({note})", pipeline, "pipeline"))
    else:
        rows.append({"case": "k8sattributes + flowmetrics", "note": note})

    rows.extend(_render_rows(quick))
    return {
        "rows": rows,
        "targets": {"k8sattributes + flowmetrics records_per_s": ">= 1,000,000 on one core",
                    "flowmetrics us_per_record": "well under 1 us"},
        "notes": f"{n}-row batches, {N_PODS} pods ({N_LOCAL} local) in {N_NS} namespaces, 200 external IPs; "
                 f"CPU time of this process (one core), median of {repeat} passes over 2 batches; "
                 f"before_us_per_record: the same case before the aggregator rewrite (commit 01cb523); "
                 f"pid {os.getpid()}",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
