"""The ``networks`` processor: named CIDRs on both ends of every flow record, and ``world`` for the rest.

Each address is matched against the configured networks in numpy (one pass per CIDR over the
batch's address words; the narrowest matching CIDR wins). The result goes where k8sattributes puts
metadata, the batch's endpoint table: a matched address gets an entry with ``network.name`` (merged
into its Kubernetes entry when it has one); an address that matches no network and is no cluster
endpoint (k8sattributes found nothing) gets ``retina.endpoint.kind: world``. Exporters write them as
``source.network.name`` / ``destination.network.name`` / ``destination.retina.endpoint.kind``; filter
and flowmetrics read them. Put it after k8sattributes. See ``docs/processors/networks.md``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer
from retina_otel.flows import EndpointTable, FlowBatch
from retina_otel.flowschema import ENDPOINT_KIND, NETWORK_NAME
from retina_otel.processors._flowstep import FlowStep, flow_step_factory
from retina_otel.processors.filter.conditions import address_words, cidr_words

__all__ = ["FACTORY", "WORLD", "NamedNetwork", "NetworksConfig", "NetworksProcessor"]

WORLD = "world"
NETWORK_KIND = "network"


class NamedNetwork(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="the network's name (`source.network.name`)")
    cidrs: list[str] = Field(min_length=1, description="its address ranges, IPv4 or IPv6")

    @field_validator("cidrs")
    @classmethod
    def _valid(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r}: {exc}") from None
        return value


class NetworksConfig(ComponentConfig):
    networks: list[NamedNetwork] = Field(
        default_factory=list, description="named CIDRs: `[{name: corp-vpn, cidrs: [10.8.0.0/16]}]`"
    )
    world: bool = Field(
        True, description="mark addresses in no network and unknown to k8sattributes `retina.endpoint.kind: world`"
    )


_MIX = np.uint64(0x9E3779B97F4A7C15)


class _Group:
    """The CIDRs of one prefix length: their masked address words, sorted by a 64-bit key."""

    def __init__(self, mhi: int, mlo: int, nets: list[tuple[int, int, int]]) -> None:
        self.mhi, self.mlo = np.uint64(mhi), np.uint64(mlo)
        his = np.asarray([h for h, _, _ in nets], dtype=np.uint64)
        los = np.asarray([lo for _, lo, _ in nets], dtype=np.uint64)
        keys = (his * _MIX) ^ los
        order = np.argsort(keys, kind="stable")
        self.keys, self.hi, self.lo = keys[order], his[order], los[order]
        self.index = np.asarray([i for _, _, i in nets], dtype=np.int32)[order]


class _Cidrs:
    """Every CIDR grouped by prefix length, narrowest first: one mask and one sorted look-up per length
    (so 100 /24s cost what one does)."""

    def __init__(self, networks: list[NamedNetwork]) -> None:
        by_length: dict[int, tuple[int, int, dict[tuple[int, int], int]]] = {}
        for index, network in enumerate(networks):
            for cidr in network.cidrs:
                net = ipaddress.ip_network(cidr, strict=False)
                length = net.prefixlen + (96 if net.version == 4 else 0)
                mhi, vhi, mlo, vlo = cidr_words(net)
                group = by_length.setdefault(length, (mhi, mlo, {}))
                group[2].setdefault((vhi, vlo), index)  # the same CIDR twice: the first network keeps it
        self.groups = [
            _Group(mhi, mlo, [(h, lo, i) for (h, lo), i in found.items()])
            for _, (mhi, mlo, found) in sorted(by_length.items(), reverse=True)
        ]

    def match(self, column: npt.NDArray[np.void]) -> npt.NDArray[np.int32]:
        """Index of the narrowest network containing each address, -1 for none."""
        hi, lo = address_words(column)
        out = np.full(hi.shape[0], -1, dtype=np.int32)
        open_rows = np.ones(hi.shape[0], dtype=bool)
        for group in self.groups:
            mh, ml = hi & group.mhi, lo & group.mlo
            keys = (mh * _MIX) ^ ml
            pos = np.searchsorted(group.keys, keys)
            np.minimum(pos, group.keys.shape[0] - 1, out=pos)
            hit = open_rows & (group.keys[pos] == keys) & (group.hi[pos] == mh) & (group.lo[pos] == ml)
            if hit.any():
                out[hit] = group.index[pos[hit]]
                open_rows &= ~hit
        return out


class NetworksProcessor(FlowStep):
    def __init__(self, settings: CreateSettings, config: NetworksConfig, next_consumer: FlowConsumer) -> None:
        self.id = settings.id
        self.config = config
        self._names = [n.name for n in config.networks]
        self._cidrs = _Cidrs(config.networks)
        self._next = next_consumer
        # Merged entries per (base table, endpoint index, network index), rebuilt when the table changes.
        self._base: object = None
        self._merged: dict[tuple[int, int], Mapping[str, Any]] = {}

    def _entry(self, entries: Any, endpoint: int, network: int) -> Mapping[str, Any]:
        found = self._merged.get((endpoint, network))
        if found is None:
            entry: dict[str, Any] = dict(entries[endpoint]) if endpoint >= 0 else {}
            if network >= 0:
                entry[NETWORK_NAME] = self._names[network]
                entry.setdefault(ENDPOINT_KIND, NETWORK_KIND)
            else:
                entry[ENDPOINT_KIND] = WORLD
            found = self._merged[(endpoint, network)] = MappingProxyType(entry)
        return found

    def decorate(self, batch: FlowBatch) -> None:
        """Rewrite the endpoint indices of matched and world addresses (in place)."""
        n = len(batch)
        if not n:
            return
        records = batch.records
        entries = batch.endpoints.entries
        if entries is not self._base:
            self._base, self._merged = entries, {}
        base = len(entries)
        width = len(self._names) + 1
        added: list[Mapping[str, Any]] = []
        code_of: dict[int, int] = {}  # key -> index in the new table, shared by both sides
        for side in ("src", "dst"):
            endpoint = records[f"{side}_endpoint"].astype(np.int64)
            network = self._cidrs.match(records[f"{side}_ip"]).astype(np.int64)
            change = network >= 0
            if self.config.world:
                change |= endpoint < 0
            rows = np.flatnonzero(change)
            if not rows.size:
                continue
            keys = (endpoint[rows] + 1) * width + (network[rows] + 1)
            unique, inverse = np.unique(keys, return_inverse=True)
            codes = np.empty(unique.size, dtype=np.int32)
            for i, key in enumerate(unique.tolist()):
                code = code_of.get(key)
                if code is None:
                    ep, net = divmod(key, width)
                    code = code_of[key] = base + len(added)
                    added.append(self._entry(entries, ep - 1, net - 1))
                codes[i] = code
            records[f"{side}_endpoint"][rows] = codes[inverse]
        if added:
            batch.endpoints = EndpointTable(entries=(*entries, *added))

    def consume_flows(self, batch: FlowBatch) -> None:
        self.decorate(batch)
        self._next.consume_flows(batch)


FACTORY: Factory[NetworksConfig] = flow_step_factory(
    "networks",
    NetworksConfig,
    NetworksProcessor,
    "named CIDRs on both ends of every flow (`network.name`, narrowest wins) and `world` for the rest",
    mutates_data=True,
    sums_flows=True,
)
