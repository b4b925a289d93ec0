"""The ``spans`` connector: from a logs pipeline (flow records) into a traces pipeline (connection spans).

The logic lives in :mod:`retina_otel.traces` (builder, targets, ids, the TracesConfiguration watch); see
``docs/traces.md``.
"""

from __future__ import annotations

from typing import Any

from retina_otel.component import CreateSettings, Factory
from retina_otel.traces.connector import SpanConnector, SpansConfig
from retina_otel.traces.spans import SpanConsumer

__all__ = ["FACTORY", "SpanConnector", "SpansConfig"]


def _create(settings: CreateSettings, config: SpansConfig, next_consumer: Any) -> SpanConnector:
    consumer = next_consumer if next_consumer is not None else settings.consumers.get("traces")
    if not isinstance(consumer, SpanConsumer):
        raise ValueError(f"{settings.id}: a spans connector needs a traces pipeline to feed")
    return SpanConnector(settings, config, consumer)


FACTORY: Factory[SpansConfig] = Factory(
    "spans",
    "connector",
    SpansConfig,
    _create,
    "one span per connection from flow records, as TracesConfiguration says (logs -> traces)",
    connects=(("logs", "traces"),),
)
