"""What the rows of one batch share: its endpoint table and the field masks a ``transform`` processor
put on it, resolved once per (table, masks) pair so that the API never shows what a mask removed.

A mask names flow-record attributes (``source.k8s.pod.name``, ``source.address``, ``source.k8s.*``);
:class:`BatchContext` turns them into what the observer needs: each side's endpoint entries with the
removed keys left out, and the set of column-backed attributes (addresses, ports, DNS names, counts,
the drop reason) that conversion blanks and filters treat as absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from retina_otel.flows import EndpointTable, FieldMask
from retina_otel.flowschema import SIDE_PREFIX

__all__ = ["COLUMN_ATTRIBUTES", "BatchContext"]

# Flow-record attributes backed by row columns that the observer shows (conversion and filters).
COLUMN_ATTRIBUTES = (
    "source.address",
    "destination.address",
    "source.port",
    "destination.port",
    "dns.question.name",
    "dns.answers",
    "retina.drop.reason",
    "retina.flow.packets",
    "retina.flow.bytes",
    "network.interface.index",
)


def _allowed(name: str, masks: Sequence[FieldMask]) -> bool:
    return all(mask.allows(name) for mask in masks)


@dataclass(frozen=True, slots=True)
class BatchContext:
    table: EndpointTable  # the batch's own table (kept so its id is not reused while this lives)
    masks: tuple[FieldMask, ...]
    endpoints: Mapping[str, EndpointTable]  # side ("src"/"dst") -> entries as that side's masks allow
    hidden: frozenset[str]  # COLUMN_ATTRIBUTES the masks remove

    @classmethod
    def of(cls, table: EndpointTable, masks: tuple[FieldMask, ...]) -> BatchContext:
        if not masks:
            return cls(table, masks, {"src": table, "dst": table}, frozenset())
        endpoints = {
            side: EndpointTable([_masked(e, prefix, masks) for e in table.entries])
            for side, prefix in SIDE_PREFIX.items()
        }
        hidden = frozenset(name for name in COLUMN_ATTRIBUTES if not _allowed(name, masks))
        return cls(table, masks, endpoints, hidden)


def _masked(entry: Mapping[str, Any], prefix: str, masks: Sequence[FieldMask]) -> Mapping[str, Any]:
    return {key: value for key, value in entry.items() if _allowed(prefix + key, masks)}
