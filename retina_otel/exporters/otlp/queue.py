"""The bounded export queue every pushed OTLP signal (flow logs, spans) goes through.

Batches are queued whole and counted in records (rows); a worker thread takes at most ``batch_size``
records at a time (splitting the head batch), encodes and exports them, so only that many are encoded at
once. Taken records stay counted in the queue until exported or counted lost, so queued plus
in-flight records stay within ``queue_size``. Losses go to
``lost_events_counter{type=<lost_type>, reason=queue_full|export_failed}``. When shutting down with a
failing endpoint, one failed export drops the rest of the queue (one timeout, not one per batch).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["ExportQueue"]

log = logging.getLogger(__name__)


class _Sized(Protocol):
    def __len__(self) -> int: ...


B = TypeVar("B", bound=_Sized)


class ExportQueue(Generic[B]):
    def __init__(
        self,
        name: str,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval: float,
        split: Callable[[B, int], tuple[B, B]],
        export: Callable[[B], bool],
        lost: Callable[[str, int], None],
    ) -> None:
        """``split(batch, n)``: the first ``n`` records and the rest; ``export(batch)``: True on success;
        ``lost(reason, n)``: count ``n`` lost records."""
        self.name = name
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._split = split
        self._export = export
        self._lost = lost
        self._queue: collections.deque[B] = collections.deque()
        self._queued = 0
        self._wake = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.exported = 0

    @property
    def queued(self) -> int:
        return self._queued

    def put(self, batch: B) -> None:
        n = len(batch)
        if not n:
            return
        with self._wake:
            if self._queued + n > self._queue_size:
                dropped = n
            else:
                self._queue.append(batch)
                self._queued += n
                dropped = 0
                if self._queued >= self._batch_size:
                    self._wake.notify()
        if dropped:
            self._lost("queue_full", dropped)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Flush what is queued (one more round) and end the worker."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        thread.join(timeout=timeout)

    def _take(self) -> B | None:
        with self._wake:
            if not self._queue:
                return None
            head = self._queue[0]
            if len(head) <= self._batch_size:
                return self._queue.popleft()
            part, rest = self._split(head, self._batch_size)
            self._queue[0] = rest
            return part

    def _export_one(self, batch: B) -> bool:
        try:
            ok = self._export(batch)
        except Exception as exc:
            log.warning("%s: export failed: %s", self.name, exc)
            ok = False
        with self._wake:
            self._queued -= len(batch)
        if ok:
            self.exported += len(batch)
        else:
            self._lost("export_failed", len(batch))
        return ok

    def _drop_all(self, reason: str) -> None:
        with self._wake:
            dropped, self._queued = self._queued, 0
            self._queue.clear()
        if dropped:
            self._lost(reason, dropped)

    def _loop(self) -> None:
        while True:
            with self._wake:
                if not self._stop.is_set() and self._queued < self._batch_size:
                    self._wake.wait(self._flush_interval)
            stopping = self._stop.is_set()
            while (batch := self._take()) is not None:
                if not self._export_one(batch) and stopping:
                    self._drop_all("export_failed")
                if self._stop.is_set() and not stopping:
                    break  # flush what is left in the final round, with the rule above
            if stopping:
                return
