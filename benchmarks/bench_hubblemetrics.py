"""hubblemetrics throughput: flow records/s on one core.

The batches are flowmetrics' realistic mix (bench_flowmetrics: 1,000 pods in 20 namespaces, 100,000-row
batches of forwards, drops, retransmissions and DNS). Cases: Retina's chart default (flow, tcp, dns with
query, drop; pod context on the egress source and the ingress destination), every handler with pod
contexts, and a high-cardinality case (pod|ip on both sides plus labelsContext), whose cost is the
number of series it creates per batch rather than the number of rows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_flowmetrics as fm

from retina_otel.flows import FlowBatch
from retina_otel.processors.hubblemetrics.aggregate import HubbleAggregator
from retina_otel.processors.hubblemetrics.config import DEFAULT_METRICS
from retina_otel.processors.hubblemetrics.spec import parse_metric

CASES: dict[str, list[str]] = {
    "Retina's chart default (flow, tcp, dns:query, drop; pod context by direction)": list(DEFAULT_METRICS),
    "all six handlers, pod contexts": [
        "flow:sourceContext=pod;destinationContext=pod",
        "tcp:sourceContext=pod;destinationContext=pod",
        "drop:sourceContext=pod;destinationContext=pod",
        "dns:query;sourceContext=pod",
        "icmp:sourceContext=pod",
        "port-distribution:destinationContext=pod",
    ],
    "high cardinality: flow with pod|ip both sides + labelsContext": [
        "flow:sourceContext=pod|ip;destinationContext=pod|ip;"
        "labelsContext=source_namespace,destination_namespace,traffic_direction",
    ],
}


def _rate(aggregator: HubbleAggregator, batches: list[FlowBatch], repeat: int) -> tuple[float, int]:
    aggregator.process(batches[0])  # per-generation tables
    best = float("inf")
    series = 0
    for _ in range(repeat):
        for batch in batches:
            started = time.process_time()
            out = aggregator.process(batch)
            best = min(best, time.process_time() - started)
            series = max(series, sum(len(v) for v in out.values()))
    return len(batches[0]) / best, series


def run(quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    repeat = 1 if quick else 5
    entries = fm._entries()
    batches = [fm._batch(n, seed, entries) for seed in range(2)]
    rows: list[dict[str, Any]] = []
    for case, metrics in CASES.items():
        rate, series = _rate(HubbleAggregator([parse_metric(m) for m in metrics]), batches, repeat)
        rows.append({"case": case, "records_per_s": int(rate), "us_per_record": round(1e6 / rate, 3),
                     "series_per_batch": series})
    default = rows[0]["records_per_s"]
    return {
        "rows": rows,
        "targets": [{"target": "Retina's default >= 1M records/s on one core", "met": default >= 1_000_000}],
        "notes": f"{n}-row batches, best of {repeat} per batch, process CPU time; the high-cardinality case "
        "is bounded by the series it renders per batch (Python per series, numpy per row).",
    }
