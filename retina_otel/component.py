"""The component contract, shaped like the OpenTelemetry Collector's.

Every receiver, processor and exporter comes from a :class:`Factory`: a type name, a frozen pydantic
config model with defaults, and a ``create`` function that receives the settings, the config and the
next consumer in the pipeline. Constructors do no I/O: :meth:`Component.start` attaches (loads BPF
programs, opens sockets, starts threads) and :meth:`Component.shutdown` detaches; shutdown is
idempotent and safe when start never ran or failed half-way.

Signals:

* **flows** (the log signal) travel as :class:`~retina_otel.flows.FlowBatch` through
  :class:`FlowConsumer` ``consume_flows`` calls: receiver -> processors -> exporters.
* **metrics** live in the agent's :class:`~retina_otel.metrics.store.MetricStore`
  (``host.metrics``): receivers and processors write aggregated values into it, metric exporters read
  snapshots of it. One store per agent, so every metrics exporter sees every metric.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from retina_otel.flows import FlowBatch
from retina_otel.metrics.store import MetricStore

__all__ = [
    "ComponentConfig",
    "ComponentKind",
    "ComponentStatus",
    "CreateSettings",
    "Factory",
    "FlowConsumer",
    "Host",
    "Lifecycle",
    "NopFlowConsumer",
    "ProvidesExtensions",
]

ComponentKind = Literal["receiver", "processor", "exporter"]


class ComponentConfig(BaseModel):
    """Base of every component config: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class ComponentStatus(enum.Enum):
    STARTING = "starting"
    OK = "ok"  # started and attached
    FAILED = "failed"  # start raised; the rest of the agent keeps running
    STOPPED = "stopped"


@runtime_checkable
class Lifecycle(Protocol):
    def start(self, host: Host) -> None:
        """Attach and begin work. Raise to report failure; the agent records it and carries on."""

    def shutdown(self) -> None:
        """Detach everything ``start`` attached. Idempotent; safe when ``start`` never ran."""


@runtime_checkable
class FlowConsumer(Protocol):
    def consume_flows(self, batch: FlowBatch) -> None:
        """Take a batch. Must not block for long: exporters queue, they never stall receivers."""


class Host(Protocol):
    """What the agent offers a running component."""

    @property
    def metrics(self) -> MetricStore: ...

    @property
    def node_name(self) -> str: ...

    @property
    def cluster_name(self) -> str:
        """``service.cluster_name`` (default ``$CLUSTER_NAME``); empty when unknown."""

    def report_status(self, component_id: str, status: ComponentStatus, detail: str = "") -> None: ...

    def count_lost(self, event_type: str, reason: str, count: int = 1) -> None:
        """Add to ``controlplane_networkobservability_lost_events_counter{type, reason}``."""

    def get_extension(self, name: str) -> object | None:
        """A shared service by name (e.g. ``"k8s_cache"``, ``"ip_filter"``), or None."""


@runtime_checkable
class ProvidesExtensions(Protocol):
    """A component that offers shared services to the others (packetparser's ``ip_filter``,
    tcplatency's ``tcp_latency``, k8sattributes' ``k8s_cache``). The agent registers them right after
    creating the component, before anything starts; others find them with ``host.get_extension``."""

    def extensions(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class CreateSettings:
    """Identity of the component being created: ``type`` or ``type/name`` as in the config file."""

    id: str
    kind: ComponentKind

    @property
    def type(self) -> str:
        return self.id.split("/", 1)[0]


ConfigT = TypeVar("ConfigT", bound=ComponentConfig)


@dataclass(frozen=True)
class Factory(Generic[ConfigT]):
    """How to make one component type.

    ``create(settings, config, next_consumer)``: ``next_consumer`` is where a receiver or processor sends
    flow batches (a fan-out to the rest of the pipeline, or a no-op when the component is only in metrics
    pipelines); exporters get ``None``.
    """

    type: str
    kind: ComponentKind
    config_model: builtins.type[ConfigT]
    create: Callable[[CreateSettings, ConfigT, FlowConsumer | None], Lifecycle]
    description: str = ""

    def default_config(self) -> ConfigT:
        return self.config_model()


class NopFlowConsumer:
    """Discards every batch (the end of a pipeline without flow exporters)."""

    def consume_flows(self, batch: FlowBatch) -> None:
        return None
