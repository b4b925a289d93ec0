"""The ``filter`` processor: keep or drop flow records by conditions on their attributes.

``include`` (when given) keeps the rows that match any of its conditions; ``exclude`` then drops the
rows that match any of its conditions (Hubble's allow list and deny list). Conditions are compiled
once (:mod:`.conditions`) and evaluated with numpy on the whole batch; the kept rows go on as a new
batch (the input is never changed, so the processor shares batches with other pipelines for free).
See ``docs/processors/filter.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer
from retina_otel.flows import FlowBatch
from retina_otel.processors._flowstep import FlowStep, flow_step_factory
from retina_otel.processors.filter.conditions import ConditionError, Predicate, compile_condition

__all__ = ["FACTORY", "FilterConfig", "FilterProcessor", "compile_rules"]

Condition = dict[str, Any]


class FilterConfig(ComponentConfig):
    include: list[Condition] | None = Field(
        None,
        description="keep only rows matching any of these conditions (each: attribute -> matcher, all must "
        "hold); absent: keep every row. See docs/processors/filter.md",
    )
    exclude: list[Condition] = Field(
        default_factory=list, description="then drop rows matching any of these conditions"
    )

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, value: list[Condition] | None, info: ValidationInfo) -> list[Condition] | None:
        if info.field_name == "include" and value == []:
            raise ValueError("an empty include list keeps no row; leave include out to keep every row")
        for i, condition in enumerate(value or ()):
            try:
                compile_condition(f"[{i}]", condition)
            except ConditionError as exc:
                raise ValueError(str(exc)) from None
        return value


def _any_of(conditions: list[Condition] | None, name: str) -> Predicate | None:
    if conditions is None:
        return None
    compiled = [compile_condition(f"{name}[{i}]", c) for i, c in enumerate(conditions)]

    def predicate(batch: FlowBatch) -> np.ndarray:
        out = np.zeros(len(batch), dtype=bool)
        for part in compiled:
            out |= part(batch)
        return out

    return compiled[0] if len(compiled) == 1 else predicate


def compile_rules(config: FilterConfig) -> Any:
    """``keep(batch) -> bool array`` of the rows the config keeps."""
    include = _any_of(config.include, "include")
    exclude = _any_of(config.exclude or None, "exclude")

    def keep(batch: FlowBatch) -> np.ndarray:
        mask = include(batch) if include is not None else np.ones(len(batch), dtype=bool)
        if exclude is not None:
            mask &= ~exclude(batch)
        return mask

    return keep


class FilterProcessor(FlowStep):
    def __init__(self, settings: CreateSettings, config: FilterConfig, next_consumer: FlowConsumer) -> None:
        self.id = settings.id
        self._keep = compile_rules(config)
        self._next = next_consumer

    def filter(self, batch: FlowBatch) -> FlowBatch | None:
        """The rows kept: the batch itself when all are, None when none is."""
        if not len(batch):
            return None
        mask = self._keep(batch)
        kept = int(np.count_nonzero(mask))
        if kept == len(batch):
            return batch
        return batch.select(mask) if kept else None

    def consume_flows(self, batch: FlowBatch) -> None:
        out = self.filter(batch)
        if out is not None:
            self._next.consume_flows(out)


FACTORY: Factory[FilterConfig] = flow_step_factory(
    "filter",
    FilterConfig,
    FilterProcessor,
    "keep or drop flow records by conditions on their attributes (addresses, CIDRs, ports, k8s metadata)",
    mutates_data=False,
)
