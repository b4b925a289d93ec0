"""Work put off for a while: a pod's series are removed only when its enrichment grace period ends, so
flows still in flight find them (flowmetrics and hubblemetrics ``forget_pods``)."""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

__all__ = ["Deferred"]

T = TypeVar("T")


class Deferred(Generic[T]):
    """Items due after a delay. ``add`` from any thread; ``due`` takes the items whose time has come
    (the caller acts on them outside the lock). Checking an empty queue takes no lock, so callers may
    ask on every batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[float, T]] = []  # (monotonic deadline, item)

    def add(self, item: T, delay_seconds: float) -> None:
        with self._lock:
            self._pending.append((time.monotonic() + delay_seconds, item))

    def due(self) -> list[T]:
        if not self._pending:
            return []
        now = time.monotonic()
        with self._lock:
            ready = [item for deadline, item in self._pending if deadline <= now]
            if ready:
                self._pending = [(d, item) for d, item in self._pending if d > now]
        return ready
