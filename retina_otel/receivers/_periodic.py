"""Lifecycle pieces shared by receivers that read the kernel from a thread of their own.

:class:`Worker` is one daemon thread and the Event that stops it; ``run_every`` is the usual loop
(call ``tick`` every interval, log a failure and carry on). :func:`cleanup_bpf` releases a bcc object
on shutdown without letting a teardown error escape. :class:`DrainingReceiver` puts them together for
the receivers whose BPF program counts flows in the kernel and whose ``flush()`` drains them every
``interval`` (:class:`DrainConfig`) into the next consumer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import Field

from retina_otel.bpf.doublebuffer import DoubleBuffer
from retina_otel.component import ComponentConfig, CreateSettings, FlowConsumer, Host
from retina_otel.flows import FlowBatch
from retina_otel.signals import NopConsumer

__all__ = ["DrainConfig", "DrainingReceiver", "Worker", "cleanup_bpf"]


class Worker:
    """One daemon thread named ``name`` and the Event that stops it; restartable after :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self, target: Callable[[], None]) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=target, name=self.name, daemon=True)
        self._thread.start()

    def run_every(self, interval: float, tick: Callable[[], object], *, log: logging.Logger, failure: str) -> None:
        """Start the thread calling ``tick()`` every ``interval`` seconds; an exception is logged as ``failure``."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    tick()
                except Exception:
                    log.exception("%s", failure)

        self.start(loop)

    def signal(self) -> None:
        """Ask the thread to stop without waiting for it (see :meth:`stop`)."""
        self._stop.set()

    def stop(self, timeout: float) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for it; idempotent, safe from the thread itself."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)


def cleanup_bpf(bpf: Any, log: logging.Logger, what: str) -> None:
    """Detach and close a bcc ``BPF`` object (None: nothing to do); a failure is logged, not raised."""
    if bpf is None:
        return
    try:
        bpf.cleanup()
    except Exception:  # pragma: no cover - best effort on teardown
        log.exception("%s: cleanup failed", what)


class DrainConfig(ComponentConfig):
    """The setting every draining receiver has: how often the kernel maps are drained."""

    interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between drains of the kernel maps into metrics and flow records (default 10).",
    )


ConfigT = TypeVar("ConfigT", bound=DrainConfig)


class DrainingReceiver(Generic[ConfigT]):
    """A receiver whose loaded BPF program counts in the kernel; ``flush()`` drains it every interval.

    Subclasses set ``kind`` (the component type, used in log messages), load their program in
    ``start()`` and hand it to :meth:`_start_draining`, and implement :meth:`_drain`, which :meth:`flush`
    calls under ``self._lock`` (the lock also guards ``self._bpf`` against :meth:`shutdown`).
    """

    kind: ClassVar[str]

    def __init__(self, settings: CreateSettings, config: ConfigT, next_consumer: FlowConsumer | None) -> None:
        self.settings = settings
        self.config = config
        self._next: FlowConsumer = next_consumer if next_consumer is not None else NopConsumer()
        self._host: Host | None = None
        self._bpf: Any = None
        self._flows: DoubleBuffer | None = None
        self._lock = threading.Lock()
        self._drainer = Worker(f"{settings.id}-drain")
        self._log = logging.getLogger(type(self).__module__)

    def _start_draining(self, bpf: Any, flows: str | None = None) -> None:
        """Drain ``bpf`` every interval; ``flows`` names its pair of per-flow maps, switched by
        ``self._flows`` (a :class:`~retina_otel.bpf.doublebuffer.DoubleBuffer`)."""
        if flows is not None:
            try:
                self._flows = DoubleBuffer(bpf, flows)
            except Exception:
                cleanup_bpf(bpf, self._log, self.kind)
                raise
        self._bpf = bpf
        self._drainer.run_every(self.config.interval, self.flush, log=self._log, failure=f"{self.kind}: drain failed")

    def shutdown(self) -> None:
        self._drainer.stop(timeout=10)
        try:
            self.flush()  # what the kernel counted since the last interval is published, not lost
        except Exception:
            self._log.exception("%s: final drain failed", self.kind)
        with self._lock:
            bpf, self._bpf = self._bpf, None
            cleanup_bpf(bpf, self._log, self.kind)  # detaches the tracepoints, closes the maps

    def flush(self) -> FlowBatch | None:
        """Drain the kernel now: write the metrics, send one batch of flows (returned; None if none)."""
        with self._lock:
            bpf, host = self._bpf, self._host
            if bpf is None or host is None:
                return None
            batch = self._drain(bpf, host)
        if batch is not None:
            self._next.consume_flows(batch)
        return batch

    def _drain(self, bpf: Any, host: Host) -> FlowBatch | None:  # pragma: no cover - subclasses implement it
        """Read (and reset) the kernel maps, publish the metrics, return the flows. Called under the lock."""
        raise NotImplementedError
