"""Pipeline signals and the fan-out that shares a batch between consumers safely.

A :class:`Signal` says how data of one kind travels: pushed batch by batch to consumers through a
method (``logs``: :class:`~retina_otel.flows.FlowBatch` through ``consume_flows``), or pulled from the
metric store at export time (``metrics``: no consumer method). A new pushed signal (``traces`` with its
own batch type) is one :func:`register_signal` call with its consumer method name and how to copy and
freeze a batch; pipelines named ``<signal>[/<name>]``, the fan-out, validation and connectors then work
for it unchanged.

:class:`FanOut` follows the Collector's rule: consumers that do not change data get the batch itself
(marked read-only when more than one of them shares it); consumers that do (``mutates_data``) get a
copy, except the last one, which gets the original when no read-only consumer shares it. So a batch an
exporter queued is never changed after its ``consume`` returned, and one pipeline pays no copy.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from retina_otel.flows import FlowBatch

__all__ = [
    "BUILTIN_SIGNALS",
    "LOGS",
    "METRICS",
    "FanOut",
    "NopConsumer",
    "Signal",
    "connect",
    "get_signal",
    "register_signal",
    "signal_names",
    "signal_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signal:
    """One kind of pipeline data.

    ``consume``: the consumer method batches are pushed through (``None``: pulled, like metrics).
    ``copy``/``mark_read_only``/``is_read_only``/``size`` act on one batch of this signal.
    """

    name: str
    consume: str | None
    copy: Callable[[Any], Any] = lambda batch: batch
    mark_read_only: Callable[[Any], None] = lambda batch: None
    is_read_only: Callable[[Any], bool] = lambda batch: False
    size: Callable[[Any], int] = len

    @property
    def pushed(self) -> bool:
        return self.consume is not None


_SIGNALS: dict[str, Signal] = {}

BUILTIN_SIGNALS: dict[str, str] = {"traces": "retina_otel.traces.spans"}
"""Signals registered by a module imported on first use: ``{"traces": "retina_otel.traces.signal"}``
(the module calls :func:`register_signal` at import). Keeps the batch types out of this module."""


def register_signal(signal: Signal) -> Signal:
    """Make a signal known (pipelines ``<name>[/...]`` become valid). Registering a name twice is an error."""
    if signal.name in _SIGNALS and _SIGNALS[signal.name] != signal:
        raise ValueError(f"signal {signal.name!r} is already registered")
    _SIGNALS[signal.name] = signal
    return signal


def get_signal(name: str) -> Signal | None:
    if name not in _SIGNALS and name in BUILTIN_SIGNALS:
        importlib.import_module(BUILTIN_SIGNALS[name])
    return _SIGNALS.get(name)


def signal_names() -> list[str]:
    return sorted({*_SIGNALS, *BUILTIN_SIGNALS})


def signal_of(pipeline: str) -> str:
    """The signal of a pipeline id: ``logs/archive`` -> ``logs``."""
    return pipeline.split("/", 1)[0]


LOGS = register_signal(
    Signal(
        "logs",
        "consume_flows",
        copy=FlowBatch.copy,
        mark_read_only=FlowBatch.mark_read_only,
        is_read_only=lambda batch: bool(batch.read_only),
    )
)
METRICS = register_signal(Signal("metrics", None))


class FanOut:
    """Hands each batch to several consumers of one signal; one consumer's failure does not starve the
    others (it is logged and its rows counted lost as ``pipeline``/``consumer_error``).

    ``consumers`` are ``(consumer, mutates_data)`` pairs. It is itself a consumer of the signal: it has the
    signal's method (``consume_flows`` for logs) and :meth:`consume`.
    """

    def __init__(
        self,
        signal: Signal,
        consumers: Sequence[tuple[object, bool]],
        on_lost: Callable[[str, str, int], None] | None = None,
    ) -> None:
        if signal.consume is None:
            raise ValueError(f"signal {signal.name!r} is not pushed; nothing to fan out")
        self.signal = signal
        self._readonly = [(c, getattr(c, signal.consume)) for c, mutates in consumers if not mutates]
        self._mutable = [(c, getattr(c, signal.consume)) for c, mutates in consumers if mutates]
        self._on_lost = on_lost
        setattr(self, signal.consume, self.consume)

    def consume_flows(self, batch: FlowBatch) -> None:  # the logs method, for static typing
        self.consume(batch)

    def _deliver(self, consumer: object, method: Callable[[Any], None], batch: Any) -> None:
        try:
            method(batch)
        except Exception:
            size = self.signal.size(batch)
            log.exception("%s consumer %r failed; batch of %d dropped for it", self.signal.name, consumer, size)
            if self._on_lost is not None:
                self._on_lost("pipeline", "consumer_error", size)

    def consume(self, batch: Any) -> None:
        signal = self.signal
        if self._mutable:
            for consumer, method in self._mutable[:-1]:
                self._deliver(consumer, method, signal.copy(batch))
            consumer, method = self._mutable[-1]
            shared = bool(self._readonly) or signal.is_read_only(batch)
            self._deliver(consumer, method, signal.copy(batch) if shared else batch)
        if len(self._readonly) > 1:
            signal.mark_read_only(batch)
        for consumer, method in self._readonly:
            self._deliver(consumer, method, batch)


class NopConsumer:
    """Discards every batch of any signal (the end of a pipeline that only feeds metrics)."""

    def consume(self, batch: object) -> None:
        return None

    def consume_flows(self, batch: FlowBatch) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[[object], None]:
        if name.startswith("consume_"):
            return self.consume
        raise AttributeError(name)


def connect(signal: Signal, consumers: Sequence[tuple[object, bool]], on_lost: Any = None) -> object:
    """The consumer to hand a signal's batches to: nothing, the one consumer itself when it does not
    change data (no wrapper), or a :class:`FanOut` (which copies only what is shared or read-only)."""
    if not consumers:
        return NopConsumer()
    if len(consumers) == 1 and not consumers[0][1]:
        return consumers[0][0]
    return FanOut(signal, consumers, on_lost)
