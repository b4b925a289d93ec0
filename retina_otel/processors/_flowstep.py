"""What the flow-log processors that only transform batches (filter, transform, ratelimit, networks)
share: a lifecycle with nothing to attach, and the factory that chains them to the next consumer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host, Lifecycle

__all__ = ["FlowStep", "flow_step_factory"]

ConfigT = TypeVar("ConfigT", bound=ComponentConfig)


class FlowStep:
    """A processor with no I/O: ``start`` keeps the host, ``shutdown`` has nothing to detach."""

    host: Host | None = None

    def start(self, host: Host) -> None:
        self.host = host

    def shutdown(self) -> None:
        return None


def flow_step_factory(
    type_name: str,
    config_model: type[ConfigT],
    make: Callable[[CreateSettings, ConfigT, FlowConsumer], Lifecycle],
    description: str,
    *,
    mutates_data: bool,
    sums_flows: bool = False,
) -> Factory[ConfigT]:
    """A logs-pipeline processor factory: ``make(settings, config, next_consumer)``; ``sums_flows``: it
    changes each record on its own and passes every one on (see :class:`~retina_otel.component.Factory`)."""

    def create(settings: CreateSettings, config: ConfigT, next_consumer: Any) -> Lifecycle:
        assert next_consumer is not None  # processors are always created with the rest of their pipeline
        return make(settings, config, next_consumer)

    return Factory(
        type_name, "processor", config_model, create, description, mutates_data=mutates_data, sums_flows=sums_flows
    )
