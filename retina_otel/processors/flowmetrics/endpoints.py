"""Per-EndpointTable look-up arrays: which slots are local pods, their namespaces and label strings.

Slot 0 is "unknown" (endpoint index -1); slot i+1 is ``entries[i]``. Built once per EndpointTable
generation (k8sattributes shares one table between batches), never per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel import flowschema as fs
from retina_otel.processors.flowmetrics.spec import ContextOptions, Plan

__all__ = ["LABEL_CACHE_LIMIT", "UNKNOWN", "WORLD", "EndpointIndex"]

UNKNOWN = "unknown"
WORLD = "world"  # retina.endpoint.kind of addresses outside the cluster (the networks processor)
LABEL_CACHE_LIMIT = 1 << 18  # label tuples kept per ContextOptions and EndpointTable generation

_FIELD_KEYS = {
    "namespace": fs.K8S_NAMESPACE,
    "podname": fs.K8S_POD_NAME,
    "workload_kind": fs.K8S_WORKLOAD_KIND,
    "workload_name": fs.K8S_WORKLOAD_NAME,
    "service": fs.K8S_SERVICE_NAME,
    "zone": fs.ZONE,
}


def _text(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if value is None or value == "":
        return UNKNOWN
    return str(value)


def _network(entry: Mapping[str, Any]) -> str:
    """The ``network`` label: the named network, ``world`` outside the cluster, else unknown."""
    name = entry.get(fs.NETWORK_NAME)
    if name:
        return str(name)
    return WORLD if entry.get(fs.ENDPOINT_KIND) == WORLD else UNKNOWN


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


class EndpointIndex:
    """Look-up arrays for one ``EndpointTable.entries`` sequence."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.entries = entries
        self.size = len(entries) + 1
        local = np.zeros(self.size, dtype=bool)
        world = np.zeros(self.size, dtype=bool)
        world[0] = True  # an address k8sattributes does not know (and no networks processor named)
        namespaces: list[str] = [UNKNOWN]
        zones: list[str] = [UNKNOWN]
        for i, entry in enumerate(entries, start=1):
            local[i] = _truthy(entry.get(fs.ENDPOINT_LOCAL, False))
            world[i] = entry.get(fs.ENDPOINT_KIND) == WORLD
            namespaces.append(_text(entry, fs.K8S_NAMESPACE))
            zones.append(_text(entry, fs.ZONE))
        self.local = local
        self.world = world
        self.namespaces = namespaces
        self.zones = zones
        self._allowed: tuple[Plan, npt.NDArray[np.bool_]] | None = None
        self._labels: dict[tuple[str, ...], dict[int, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        self._label_caches: dict[ContextOptions, dict[tuple[int, int, int, int], tuple[str, ...]]] = {}

    def allowed(self, plan: Plan) -> npt.NDArray[np.bool_]:
        """Slots whose namespace passes the plan's include/exclude (slot 0 never does when filtering)."""
        cached = self._allowed
        if cached is not None and cached[0] is plan:
            return cached[1]
        if not plan.filters_namespaces:
            mask = np.ones(self.size, dtype=bool)
        else:
            mask = np.fromiter((plan.namespace_allowed(ns) for ns in self.namespaces), dtype=bool, count=self.size)
            mask[0] = False
        self._allowed = (plan, mask)
        return mask

    def context(self, opts: ContextOptions, slot: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The entry-derived labels of ``slot`` for ``opts``: (before port, after port) in label order."""
        fields = opts.entry_fields
        per_slot = self._labels.get(fields)
        if per_slot is None:
            per_slot = self._labels[fields] = {}
        found = per_slot.get(slot)
        if found is None:
            entry: Mapping[str, Any] = self.entries[slot - 1] if slot > 0 else {}
            head = tuple(_text(entry, _FIELD_KEYS[f]) for f in fields if f not in ("zone", "network"))
            tail = (_text(entry, fs.ZONE),) if opts.zone else ()
            if opts.network:
                tail = (*tail, _network(entry))
            found = per_slot[slot] = (head, tail)
        return found

    def label_cache(self, opts: ContextOptions) -> dict[tuple[int, int, int, int], tuple[str, ...]]:
        """Full context label tuples of ``opts`` by (slot, address high word, low word, port), kept across
        batches of this generation (the aggregator fills it); emptied when it outgrows its bound."""
        cache = self._label_caches.get(opts)
        if cache is None:
            cache = self._label_caches[opts] = {}
        elif len(cache) > LABEL_CACHE_LIMIT:
            cache.clear()
        return cache
