"""The ``debug`` exporter: flow records, spans and metrics, human-readable, on stdout (or stderr)."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from typing import Literal, TextIO

from pydantic import Field

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.flows import FlowBatch
from retina_otel.flowschema import rows_as_attributes
from retina_otel.metrics.store import HistogramValue
from retina_otel.traces.spans import SpanBatch

__all__ = ["FACTORY", "DebugConfig", "DebugExporter"]


class DebugConfig(ComponentConfig):
    verbosity: Literal["basic", "normal", "detailed"] = Field(
        "basic",
        description="basic: one line per batch with counts; normal: one line per flow record (span); "
        "detailed: every attribute of every record (span, with its events) as JSON",
    )
    metrics_interval: float = Field(0.0, ge=0, description="seconds between metric dumps; 0 = never")
    stream: Literal["stdout", "stderr"] = "stdout"


def _one_line(attrs: dict[str, object]) -> str:
    src = f"{attrs.get('source.address')}:{attrs.get('source.port', '')}"
    dst = f"{attrs.get('destination.address')}:{attrs.get('destination.port', '')}"
    names = ""
    if attrs.get("source.k8s.pod.name") or attrs.get("destination.k8s.pod.name"):
        names = (
            f" [{attrs.get('source.k8s.namespace.name', '')}/{attrs.get('source.k8s.pod.name', '-')}"
            f" -> {attrs.get('destination.k8s.namespace.name', '')}/{attrs.get('destination.k8s.pod.name', '-')}]"
        )
    extra = ""
    if "retina.drop.reason" in attrs:
        extra += f" reason={attrs['retina.drop.reason']}"
    if "dns.question.name" in attrs:
        extra += f" query={attrs['dns.question.name']} rcode={attrs.get('dns.response_code')}"
    return (
        f"{attrs.get('event.name')} {attrs.get('network.transport')} {src} -> {dst}{names} "
        f"{attrs.get('retina.flow.direction')} {attrs.get('retina.flow.verdict')} "
        f"pkts={attrs.get('retina.flow.packets')} bytes={attrs.get('retina.flow.bytes')}{extra}"
    )


class DebugExporter:
    def __init__(self, settings: CreateSettings, config: DebugConfig) -> None:
        self.id = settings.id
        self.config = config
        self._host: Host | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _out(self) -> TextIO:
        return sys.stdout if self.config.stream == "stdout" else sys.stderr

    def start(self, host: Host) -> None:
        self._host = host
        if self.config.metrics_interval > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"{self.id}-metrics", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.metrics_interval):
            self.dump_metrics()

    def dump_metrics(self) -> None:
        assert self._host is not None
        lines = []
        for snap in self._host.metrics.collect():
            for labels, value, _ in snap.series:
                label_text = ",".join(f'{k}="{v}"' for k, v in zip(snap.label_names, labels, strict=True))
                shown = (
                    f"count={value.count} sum={value.total:g}" if isinstance(value, HistogramValue) else f"{value:g}"
                )
                lines.append(f"{snap.name}{{{label_text}}} {shown}")
        with self._lock:
            print("\n".join(lines), file=self._out, flush=True)

    def consume_flows(self, batch: FlowBatch) -> None:
        if not len(batch):
            return
        if self.config.verbosity == "basic":
            text = (
                f"{batch.receiver or 'flows'}: {len(batch)} records, "
                f"{int(batch.records['packets'].sum())} packets, {int(batch.records['bytes'].sum())} bytes"
            )
        elif self.config.verbosity == "normal":
            text = "\n".join(_one_line(attrs) for attrs in rows_as_attributes(batch))
        else:
            text = "\n".join(json.dumps(attrs, default=str, sort_keys=True) for attrs in rows_as_attributes(batch))
        with self._lock:
            print(text, file=self._out, flush=True)

    def consume_spans(self, batch: SpanBatch) -> None:
        if not len(batch):
            return
        from retina_otel.traces.schema import one_line, span_views

        if self.config.verbosity == "basic":
            errors = int((batch.records["status"] == 2).sum())
            text = f"spans: {len(batch)} spans, {errors} with status ERROR, {len(batch.events)} events"
        elif self.config.verbosity == "normal":
            text = "\n".join(one_line(view) for view in span_views(batch))
        else:
            text = "\n".join(
                json.dumps(
                    {**dataclasses.asdict(view), "trace_id": view.trace_id.hex(), "span_id": view.span_id.hex(),
                     "parent_span_id": view.parent_span_id.hex()},
                    default=str,
                    sort_keys=True,
                )
                for view in span_views(batch)
            )
        with self._lock:
            print(text, file=self._out, flush=True)

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _create(settings: CreateSettings, config: DebugConfig, _next: FlowConsumer | None) -> DebugExporter:
    return DebugExporter(settings, config)


FACTORY: Factory[DebugConfig] = Factory(
    "debug", "exporter", DebugConfig, _create, "human-readable output", signals=("logs", "metrics", "traces")
)
