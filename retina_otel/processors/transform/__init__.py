"""The ``transform`` processor: a field mask on flow records (keep only listed attributes, or drop some).

The rows are not touched: the batch goes on as a new :class:`~retina_otel.flows.FlowBatch` sharing
them, with a :class:`~retina_otel.flows.FieldMask` appended that exporters apply when they turn rows
into attributes (OTLP logs, debug). Derived metrics (flowmetrics) still see every column.
See ``docs/processors/transform.md``.
"""

from __future__ import annotations

import dataclasses

from pydantic import Field, model_validator

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer
from retina_otel.flows import FieldMask, FlowBatch
from retina_otel.processors._flowstep import FlowStep, flow_step_factory

__all__ = ["FACTORY", "TransformConfig", "TransformProcessor"]


class TransformConfig(ComponentConfig):
    keep: list[str] | None = Field(
        None,
        description="attributes to keep (exact names, or prefixes ending in `*` such as `source.k8s.*`); "
        "absent: all. `event.name` always stays",
    )
    drop: list[str] = Field(default_factory=list, description="attributes to remove (names or `prefix*`)")

    @model_validator(mode="after")
    def _something(self) -> TransformConfig:
        if self.keep is None and not self.drop:
            raise ValueError("set keep, drop or both")
        return self


class TransformProcessor(FlowStep):
    def __init__(self, settings: CreateSettings, config: TransformConfig, next_consumer: FlowConsumer) -> None:
        self.id = settings.id
        self.mask = FieldMask(keep=None if config.keep is None else frozenset(config.keep), drop=frozenset(config.drop))
        self._next = next_consumer

    def consume_flows(self, batch: FlowBatch) -> None:
        masked = dataclasses.replace(batch, attributes=dict(batch.attributes), masks=(*batch.masks, self.mask))
        self._next.consume_flows(masked)


FACTORY: Factory[TransformConfig] = flow_step_factory(
    "transform",
    TransformConfig,
    TransformProcessor,
    "field mask: keep only the listed flow-record attributes, or drop some, before export",
    mutates_data=False,
)
