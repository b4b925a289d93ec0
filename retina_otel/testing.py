"""Test helpers for components: a host and a consumer that record what they get.

Components can be started and exercised without the agent's service: ``component.start(TestHost())``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from retina_otel.component import ComponentStatus
from retina_otel.extensions import ExtensionKey
from retina_otel.flows import FLOW_DTYPE, FlowBatch
from retina_otel.metrics.store import MetricStore

__all__ = ["CollectingConsumer", "TestHost", "wait_for"]


class TestHost:
    """A :class:`~retina_otel.component.Host` with its own metric store and a status log."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        node_name: str = "test-node",
        extensions: Mapping[ExtensionKey[Any] | str, object] | None = None,
        cluster_name: str = "",
    ) -> None:
        self._metrics = MetricStore()
        self._node_name = node_name
        self._cluster_name = cluster_name
        self.statuses: list[tuple[str, ComponentStatus, str]] = []
        self.extensions: dict[str, object] = {str(k): v for k, v in (extensions or {}).items()}
        self._lost = self._metrics.counter(
            "controlplane_networkobservability_lost_events_counter", "Events lost", ("type", "reason")
        )

    @property
    def metrics(self) -> MetricStore:
        return self._metrics

    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def cluster_name(self) -> str:
        return self._cluster_name

    def report_status(self, component_id: str, status: ComponentStatus, detail: str = "") -> None:
        self.statuses.append((component_id, status, detail))

    def count_lost(self, event_type: str, reason: str, count: int = 1) -> None:
        self._lost.add((event_type, reason), count)

    def get_extension(self, key: ExtensionKey[Any] | str) -> Any:
        """By name from ``extensions`` (keyed by name); a typed key also checks the service's type."""
        if isinstance(key, str):
            return self.extensions.get(key)
        found = self.extensions.get(key.name)
        return found if isinstance(found, key.type) else None


class CollectingConsumer:
    """Keeps every batch it is given (thread-safe); ``records()`` concatenates them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches: list[FlowBatch] = []

    def consume_flows(self, batch: FlowBatch) -> None:
        with self._lock:
            self.batches.append(batch)

    def records(self) -> np.ndarray:
        with self._lock:
            if not self.batches:
                return np.zeros(0, dtype=FLOW_DTYPE)
            return np.concatenate([b.records for b in self.batches])

    def clear(self) -> None:
        with self._lock:
            self.batches.clear()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
