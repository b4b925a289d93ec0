"""The agent's metric store: one aggregation that both exporters read.

The OpenTelemetry SDK costs about 10 us per ``add()`` (measured on the 2-core test VM), so hot paths never
touch it.
Receivers and processors aggregate in Python (or in the kernel) and write into a :class:`MetricStore`
one value per series per batch; the Prometheus exporter renders :meth:`MetricStore.collect` at scrape
time and the OTLP exporter turns the same snapshot into SDK ``MetricsData``. One store, one truth.

Every family records the components that declared it (its ``owners``). A component writes through
its own view (:meth:`MetricStore.view`, the agent hands it out as ``host.metrics``) that tags the
families it declares; an exporter reads through a view limited to the owners of its metrics
pipelines, so one Prometheus endpoint can serve node metrics and another pod-level ones.

Cardinality governance lives here, per family: a TTL that expires series not updated within it,
a series budget past which new label sets fold into one overflow series, and removal of every series
that carries a given label value (a deleted pod). What is expired or folded is counted in the store's
own ``controlplane_networkobservability_*`` families.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

__all__ = [
    "AGENT_OWNER",
    "OVERFLOW_LABEL_VALUE",
    "Family",
    "FamilySnapshot",
    "HistogramValue",
    "MetricKind",
    "MetricStore",
]

OVERFLOW_LABEL_VALUE = "__overflow__"
"""Every label of the overflow series carries this value (Prometheus needs a fixed label set)."""

LabelValues = tuple[str, ...]

AGENT_OWNER = ""
"""Owner of the agent's own families (lost events, component status, store bookkeeping)."""


class MetricKind(Enum):
    COUNTER = "counter"  # monotonic cumulative sum
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(slots=True)
class HistogramValue:
    """Cumulative explicit-bucket histogram state: ``bucket_counts[i]`` counts values <= bounds[i]
    (non-cumulative per bucket, the last one is +Inf), as OTLP carries it."""

    bucket_counts: list[int]
    total: float = 0.0
    count: int = 0
    minimum: float = float("inf")
    maximum: float = float("-inf")


@dataclass(slots=True)
class _Series:
    value: float | HistogramValue
    updated: float  # monotonic seconds of the last write
    start_ns: int  # wall clock when the series began (OTLP start_time_unix_nano)


@dataclass(frozen=True, slots=True)
class FamilySnapshot:
    name: str
    description: str
    unit: str
    kind: MetricKind
    label_names: tuple[str, ...]
    bounds: tuple[float, ...]
    series: tuple[tuple[LabelValues, float | HistogramValue, int], ...]  # (labels, value, start_ns)


class Family:
    """A metric with fixed label names. Thread-safe; writes are O(series touched)."""

    def __init__(
        self,
        store: MetricStore,
        name: str,
        description: str,
        kind: MetricKind,
        label_names: Sequence[str],
        *,
        unit: str = "",
        bounds: Sequence[float] = (),
        ttl_seconds: float | None = None,
        max_series: int | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.kind = kind
        self.label_names = tuple(label_names)
        self.unit = unit
        self.bounds = tuple(float(b) for b in bounds)
        self.ttl_seconds = ttl_seconds
        self.max_series = max_series
        self._store = store
        self._lock = threading.Lock()
        self._series: dict[LabelValues, _Series] = {}
        self._overflow_key: LabelValues = tuple(OVERFLOW_LABEL_VALUE for _ in self.label_names)
        self._np_bounds = np.asarray(self.bounds, dtype=np.float64)
        self.owners: set[str] = set()
        self._folded = 0  # label sets folded into overflow by the current write, counted once after it

    # -- configuration --------------------------------------------------------------------------
    def configure(self, *, ttl_seconds: float | None, max_series: int | None) -> None:
        with self._lock:
            self.ttl_seconds = ttl_seconds
            self.max_series = max_series

    # -- writes ---------------------------------------------------------------------------------
    def _slot(self, key: LabelValues, now: float, initial: Callable[[], float | HistogramValue]) -> _Series:
        """The series for ``key``, created (or folded into overflow) when new. Caller holds the lock."""
        series = self._series.get(key)
        if series is None:
            # The budget counts real label sets; the overflow series comes on top of it.
            real = len(self._series) - (self._overflow_key in self._series)
            if self.max_series is not None and real >= self.max_series:
                self._folded += 1
                key = self._overflow_key
                series = self._series.get(key)
                if series is not None:
                    return series
            series = _Series(initial(), now, time.time_ns())
            self._series[key] = series
        return series

    def add(self, labels: LabelValues, amount: float = 1.0) -> None:
        self.add_many(((labels, amount),))

    def add_many(self, items: Iterable[tuple[LabelValues, float]]) -> None:
        """Counter increments (or gauge deltas), one per series."""
        now = time.monotonic()
        with self._lock:
            for key, amount in items:
                series = self._slot(key, now, float)
                series.value = float(series.value) + amount  # type: ignore[arg-type]
                series.updated = now
            folded, self._folded = self._folded, 0
        self._report_folded(folded)

    def set(self, labels: LabelValues, value: float) -> None:
        self.set_many(((labels, value),))

    def set_many(self, items: Iterable[tuple[LabelValues, float]]) -> None:
        """Gauge values, or a counter's cumulative total read from elsewhere (a kernel map)."""
        now = time.monotonic()
        with self._lock:
            for key, value in items:
                series = self._slot(key, now, float)
                series.value = float(value)
                series.updated = now
            folded, self._folded = self._folded, 0
        self._report_folded(folded)

    def observe_many(self, labels: LabelValues, values: Sequence[float] | np.ndarray) -> None:
        """Histogram observations for one series, bucketed in bulk."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return
        counts = np.bincount(np.searchsorted(self._np_bounds, arr, side="left"), minlength=len(self.bounds) + 1)
        now = time.monotonic()
        with self._lock:
            series = self._slot(labels, now, lambda: HistogramValue([0] * (len(self.bounds) + 1)))
            hist = series.value
            assert isinstance(hist, HistogramValue)
            for i, c in enumerate(counts.tolist()):
                hist.bucket_counts[i] += c
            hist.total += float(arr.sum())
            hist.count += int(arr.size)
            hist.minimum = min(hist.minimum, float(arr.min()))
            hist.maximum = max(hist.maximum, float(arr.max()))
            series.updated = now
            folded, self._folded = self._folded, 0
        self._report_folded(folded)

    def observe(self, labels: LabelValues, value: float) -> None:
        now = time.monotonic()
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._slot(labels, now, lambda: HistogramValue([0] * (len(self.bounds) + 1)))
            hist = series.value
            assert isinstance(hist, HistogramValue)
            hist.bucket_counts[index] += 1
            hist.total += value
            hist.count += 1
            hist.minimum = min(hist.minimum, value)
            hist.maximum = max(hist.maximum, value)
            series.updated = now
            folded, self._folded = self._folded, 0
        self._report_folded(folded)

    def _report_folded(self, count: int) -> None:
        if count:
            self._store.count_folded(self.name, count)

    # -- removal --------------------------------------------------------------------------------
    def remove_where(self, label: str, values: Iterable[str]) -> int:
        """Drop every series whose ``label`` is one of ``values``; returns how many went."""
        try:
            index = self.label_names.index(label)
        except ValueError:
            return 0
        wanted = set(values)
        with self._lock:
            doomed = [k for k in self._series if k[index] in wanted]
            for k in doomed:
                del self._series[k]
        return len(doomed)

    def remove_where_all(self, labels: Sequence[str], values: Iterable[tuple[str, ...]]) -> int:
        """Drop every series whose ``labels`` (all of them) have one of the value tuples ``values``, e.g.
        ``(namespace, podname)`` pairs; 0 when the family lacks one of the labels."""
        try:
            indexes = [self.label_names.index(label) for label in labels]
        except ValueError:
            return 0
        wanted = set(values)
        with self._lock:
            doomed = [k for k in self._series if tuple(k[i] for i in indexes) in wanted]
            for k in doomed:
                del self._series[k]
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._series.clear()

    def expire(self, now: float | None = None) -> int:
        """Remove series not written within the TTL; returns how many expired."""
        if self.ttl_seconds is None:
            return 0
        cutoff = (time.monotonic() if now is None else now) - self.ttl_seconds
        with self._lock:
            doomed = [k for k, s in self._series.items() if s.updated < cutoff]
            for k in doomed:
                del self._series[k]
        return len(doomed)

    # -- reads ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._series)

    def value(self, labels: LabelValues) -> float | HistogramValue | None:
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                return None
            if isinstance(series.value, HistogramValue):
                v = series.value
                return HistogramValue(list(v.bucket_counts), v.total, v.count, v.minimum, v.maximum)
            return series.value

    def snapshot(self) -> FamilySnapshot:
        with self._lock:
            items: list[tuple[LabelValues, float | HistogramValue, int]] = []
            for key, s in self._series.items():
                v = s.value
                if isinstance(v, HistogramValue):
                    v = HistogramValue(list(v.bucket_counts), v.total, v.count, v.minimum, v.maximum)
                items.append((key, v, s.start_ns))
        return FamilySnapshot(
            self.name, self.description, self.unit, self.kind, self.label_names, self.bounds, tuple(items)
        )


class MetricStore:
    """All metric families of one agent, by name. Families are created once and then written to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}
        self._collect_hooks: list[tuple[str, Callable[[], None]]] = []
        self._owner = AGENT_OWNER
        self._sources: frozenset[str] | None = None  # owners this view reads; None = every family
        self._expired = self._create(
            "controlplane_networkobservability_expired_metrics_counter",
            "Series removed because they were not updated within their metric's TTL",
            MetricKind.COUNTER,
            ("metric",),
        )
        self._folded = self._create(
            "controlplane_networkobservability_overflow_series_counter",
            "Label sets folded into a metric's overflow series because its series budget was full",
            MetricKind.COUNTER,
            ("metric",),
        )

    def _create(self, name: str, description: str, kind: MetricKind, labels: Sequence[str], **kw: Any) -> Family:
        family = Family(self, name, description, kind, labels, **kw)
        family.owners.add(self._owner)
        self._families[name] = family
        return family

    def view(self, owner: str, sources: Iterable[str] | None = None) -> MetricStore:
        """The same store seen by one component: families it declares are tagged ``owner``; ``collect``,
        ``families`` and collect hooks are limited to families of ``sources`` (None: all)."""
        view = object.__new__(MetricStore)
        view.__dict__.update(self.__dict__)  # shares the families, hooks and lock
        view._owner = owner
        view._sources = None if sources is None else frozenset(sources)
        return view

    @property
    def owner(self) -> str:
        return self._owner

    def _visible(self, owners: set[str] | frozenset[str] | str) -> bool:
        if self._sources is None:
            return True
        if isinstance(owners, str):
            return owners in self._sources
        return not self._sources.isdisjoint(owners)

    def family(
        self,
        name: str,
        description: str,
        kind: MetricKind,
        label_names: Sequence[str] = (),
        *,
        unit: str = "",
        bounds: Sequence[float] = (),
        ttl_seconds: float | None = None,
        max_series: int | None = None,
    ) -> Family:
        """Get or create a family. Re-declaring one with other labels or kind is a programming error."""
        with self._lock:
            existing = self._families.get(name)
            if existing is not None:
                if existing.kind is not kind or existing.label_names != tuple(label_names):
                    raise ValueError(f"metric {name!r} already declared as {existing.kind.value}{existing.label_names}")
                existing.owners.add(self._owner)
                return existing
            return self._create(
                name,
                description,
                kind,
                label_names,
                unit=unit,
                bounds=bounds,
                ttl_seconds=ttl_seconds,
                max_series=max_series,
            )

    def counter(self, name: str, description: str, label_names: Sequence[str] = (), **kw: Any) -> Family:
        return self.family(name, description, MetricKind.COUNTER, label_names, **kw)

    def gauge(self, name: str, description: str, label_names: Sequence[str] = (), **kw: Any) -> Family:
        return self.family(name, description, MetricKind.GAUGE, label_names, **kw)

    def histogram(
        self, name: str, description: str, label_names: Sequence[str], bounds: Sequence[float], **kw: Any
    ) -> Family:
        return self.family(name, description, MetricKind.HISTOGRAM, label_names, bounds=bounds, **kw)

    def get(self, name: str) -> Family | None:
        return self._families.get(name)

    def remove(self, name: str) -> None:
        """Forget a family entirely (an advanced metric switched off by configuration)."""
        with self._lock:
            self._families.pop(name, None)

    def families(self) -> list[Family]:
        """The families this view reads (all of them for a component's own view or the agent's store)."""
        with self._lock:
            return [f for f in self._families.values() if self._visible(f.owners)]

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Called before every :meth:`collect` of a view that reads this owner's families (refresh values
        computed at read time, e.g. procfs)."""
        self._collect_hooks.append((self._owner, hook))

    def count_folded(self, metric: str, count: int) -> None:
        """A family reports ``count`` label sets folded into its overflow series (budget full)."""
        self._folded.add((metric,), count)

    def expire(self) -> int:
        total = 0
        with self._lock:
            everything = list(self._families.values())
        for family in everything:
            n = family.expire()
            if n:
                self._expired.add((family.name,), n)
                total += n
        return total

    def collect(self) -> list[FamilySnapshot]:
        for owner, hook in list(self._collect_hooks):
            if not self._visible(owner):
                continue
            try:
                hook()
            except Exception:  # a broken hook must not break the scrape
                import logging

                logging.getLogger(__name__).exception("metric collect hook failed")
        self.expire()
        return [f.snapshot() for f in self.families()]
