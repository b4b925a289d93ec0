"""The ``nop`` exporter: ends a logs pipeline whose flow records are only needed for derived metrics."""

from __future__ import annotations

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.flows import FlowBatch

__all__ = ["FACTORY", "NopConfig", "NopExporter"]


class NopConfig(ComponentConfig):
    pass


class NopExporter:
    def start(self, host: Host) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def consume_flows(self, batch: FlowBatch) -> None:
        return None


def _create(_settings: CreateSettings, _config: NopConfig, _next: FlowConsumer | None) -> NopExporter:
    return NopExporter()


FACTORY: Factory[NopConfig] = Factory("nop", "exporter", NopConfig, _create, "discards flow records")
