"""The component contract, shaped like the OpenTelemetry Collector's.

Every receiver, processor and exporter comes from a :class:`Factory`: a type name, a frozen pydantic
config model with defaults, and a ``create`` function that receives the settings, the config and the
next consumer in the pipeline. Constructors do no I/O: :meth:`Component.start` attaches (loads BPF
programs, opens sockets, starts threads) and :meth:`Component.shutdown` detaches; shutdown is
idempotent and safe when start never ran or failed half-way.

Signals (:mod:`retina_otel.signals`):

* **logs** (flow records) travel as :class:`~retina_otel.flows.FlowBatch` through
  :class:`FlowConsumer` ``consume_flows`` calls: receiver -> processors -> exporters (or connectors).
* **metrics** live in the agent's :class:`~retina_otel.metrics.store.MetricStore`: each receiver,
  connector and processor writes into ``host.metrics`` (its own view of the store, which tags the families
  it declares with its id) and a metrics exporter's ``host.metrics.collect()`` returns only the families of
  the receivers and connectors of the metrics pipelines it is in (plus the agent's own telemetry and,
  for compatibility, metrics written by processors).

A factory declares the signals its component handles (``signals``; a connector declares the
``(from, to)`` pairs it ``connects``), whether it changes the batches it is given (``mutates_data``: the
fan-out then hands it a copy when the batch is shared), the extensions it offers (``provides``) and,
optionally, which flow-record fields it reads (``reads``) or only fills (``fills``): a processor whose
fields nothing downstream reads is left out of its pipeline; and whether it only sums each flow's records
(``sums_flows``): a receiver whose records reach only such components may write fewer of them.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, overload, runtime_checkable

from pydantic import BaseModel, ConfigDict

from retina_otel.eventdemand import EventDemand
from retina_otel.extensions import ExtensionKey
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
    "ProvidesExtensions",
]

ComponentKind = Literal["receiver", "processor", "exporter", "connector"]

T = TypeVar("T")


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

    @overload
    def get_extension(self, key: ExtensionKey[T]) -> T | None: ...

    @overload
    def get_extension(self, key: str) -> object | None: ...

    def get_extension(self, key: ExtensionKey[Any] | str) -> object | None:
        """A shared service by typed key (e.g. ``IP_FILTER``), or None; a bare name returns it untyped."""


@runtime_checkable
class ProvidesExtensions(Protocol):
    """A component that offers shared services to the others (packetparser's ``ip_filter``,
    tcplatency's ``tcp_latency``, k8sattributes' ``k8s_cache``). The agent registers them right after
    creating the component, before anything starts; others find them with ``host.get_extension``. Each
    key must be listed in the factory's ``provides`` (duplicates between components are config errors)."""

    def extensions(self) -> Mapping[ExtensionKey[Any] | str, object]: ...


@dataclass(frozen=True, slots=True)
class CreateSettings:
    """Identity of the component being created: ``type`` or ``type/name`` as in the config file.

    ``pipeline`` is the pipeline a processor instance belongs to (empty for the others, which are shared).
    ``consumers`` maps each push signal the component emits into (``logs``, ...) to where it goes; the
    factory's ``next_consumer`` argument is the one of its main output signal. ``only_sums`` (receivers):
    everything its flow records reach declares ``Factory.sums_flows``, so how it splits a flow's counts
    into records changes no output (packetparser then writes fewer, larger records). ``event_demand``: for
    a receiver with ``only_sums``, the demand under which that holds only while nobody holds it (some of
    its consumers read each record while they hold it: the observer while a client follows live flows);
    for a component with ``Factory.events_on_demand``, the demand to hold while it reads each record."""

    id: str
    kind: ComponentKind
    pipeline: str = ""
    consumers: Mapping[str, object] = field(default_factory=dict)
    only_sums: bool = False
    event_demand: EventDemand | None = None

    @property
    def type(self) -> str:
        return self.id.split("/", 1)[0]


ConfigT = TypeVar("ConfigT", bound=ComponentConfig)


@dataclass(frozen=True)
class Factory(Generic[ConfigT]):
    """How to make one component type.

    ``create(settings, config, next_consumer)``: ``next_consumer`` is where a receiver or processor sends
    flow batches (a fan-out to the rest of the pipeline, or a no-op when the component is only in metrics
    pipelines), and where a connector sends its output signal (``None`` when that is metrics); exporters
    get ``None``.

    ``signals``: the pipeline signals the component can be in (default: receivers and exporters logs and
    metrics, processors logs). ``connects``: a connector's ``(from, to)`` signal pairs.
    ``mutates_data``: the component changes batches in place (default: processors yes, others no).
    ``provides``: the extension keys its ``extensions()`` offers.
    ``reads``: the flow-record fields (:data:`retina_otel.flows.FLOW_DTYPE` names) the component reads,
    given its config; ``None`` (the default): any field. ``fills``: for a processor whose only change to
    a batch is filling these fields; a pipeline leaves such a processor out when nothing after it (its
    later processors and its exporters or connectors) reads any of them.
    ``sums_flows``: the component's output depends on forwarded-flow records (``event`` FLOW) only through
    each flow's sums of their counters (a processor: it changes each record on its own and passes every
    one on), so a receiver may split a flow's counts into fewer records (:attr:`CreateSettings.only_sums`).
    Default: no (an exporter of flow logs, a rate limit or a filter sees each record).
    ``events_on_demand``: given its config, the component reads each flow record only while it holds the
    :class:`~retina_otel.eventdemand.EventDemand` it gets in ``CreateSettings.event_demand`` and otherwise
    needs only each flow's sums (the observer: while a client follows live flows).
    """

    type: str
    kind: ComponentKind
    config_model: builtins.type[ConfigT]
    create: Callable[[CreateSettings, ConfigT, Any], Lifecycle]
    description: str = ""
    signals: tuple[str, ...] | None = None
    mutates_data: bool | None = None
    provides: tuple[ExtensionKey[Any], ...] = ()
    connects: tuple[tuple[str, str], ...] = ()
    reads: Callable[[ConfigT], frozenset[str]] | None = None
    fills: tuple[str, ...] = ()
    sums_flows: bool = False
    events_on_demand: Callable[[ConfigT], bool] | None = None

    def default_config(self) -> ConfigT:
        return self.config_model()

    @property
    def supported_signals(self) -> tuple[str, ...]:
        if self.signals is not None:
            return self.signals
        if self.kind == "connector":
            return tuple(dict.fromkeys(s for pair in self.connects for s in pair))
        return ("logs",) if self.kind == "processor" else ("logs", "metrics")

    @property
    def mutates(self) -> bool:
        return self.kind == "processor" if self.mutates_data is None else self.mutates_data
