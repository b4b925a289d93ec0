"""Conditions on flow-record attributes, compiled into numpy predicates over a columnar batch.

A condition is a mapping of attribute names (as exporters write them, ``docs/flow-records.md``) to
matchers, all of which must hold; the key ``not`` negates a nested condition. A matcher is

* a scalar: equality (``network.transport: tcp``);
* a list: one of the values (``destination.port: [53, 5353]``);
* a mapping of operators, all of which must hold: ``eq``, ``in``, ``prefix`` (string or list),
  ``cidr`` (addresses: string or list), ``range: [min, max]`` (inclusive), ``min``, ``max``, ``not``
  (a nested matcher).

Each compiles to ``predicate(batch) -> bool array``: columns are compared with numpy; attributes of the
endpoint table (``source.k8s.namespace.name``, ``destination.network.name``, ...) are evaluated once per
table entry (cached while the table object is the same) and gathered by the rows' endpoint indices; the
drop reason is evaluated once per interned string. A row without the attribute matches no operator
(so ``not`` of it matches).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.flows import STRINGS, Direction, Event, FlowBatch, ObservationPoint, Verdict
from retina_otel.flowschema import ENDPOINT_KEYS, K8S_POD_LABEL_PREFIX, NETWORK_NAME, SIDE_PREFIX

__all__ = ["ATTRIBUTES", "ConditionError", "Predicate", "cidr_words", "compile_condition", "compile_matcher"]

Mask = npt.NDArray[np.bool_]
Predicate = Callable[[FlowBatch], Mask]
ValueTest = Callable[[Any], bool]

_OPERATORS = ("eq", "in", "prefix", "cidr", "range", "min", "max", "not")


class ConditionError(ValueError):
    """A condition that cannot be compiled; the message names the attribute or operator."""


# -- attribute catalogue -----------------------------------------------------------------------------------

_TRANSPORT = {"tcp": (6,), "udp": (17,), "icmp": (1, 58), "sctp": (132,)}
_ENUMS: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {
    "network.transport": ("proto", _TRANSPORT),
    "network.type": ("ip_version", {"ipv4": (4,), "ipv6": (6,)}),
    "retina.flow.direction": ("direction", {d.name.lower(): (int(d),) for d in Direction}),
    "network.io.direction": ("direction", {"receive": (1,), "transmit": (2,), "unknown": (0,)}),
    "retina.flow.observation_point": ("observation_point", {o.name.lower(): (int(o),) for o in ObservationPoint}),
    "retina.flow.verdict": ("verdict", {v.name.lower(): (int(v),) for v in Verdict}),
    "event.name": ("event", {f"retina.flow.{e.name.lower()}": (int(e),) for e in Event}),
}
_ICMP = (1, 58)
# attribute -> (column, present only for: None = every row, "icmp" = ICMP rows, "ports" = the others)
_NUMBERS: dict[str, tuple[str, str | None]] = {
    "source.port": ("src_port", "ports"),
    "destination.port": ("dst_port", "ports"),
    "retina.icmp.type": ("src_port", "icmp"),
    "retina.icmp.code": ("dst_port", "icmp"),
    "retina.flow.packets": ("packets", None),
    "retina.flow.bytes": ("bytes", None),
    "retina.flow.reply_packets": ("reply_packets", None),
    "retina.flow.reply_bytes": ("reply_bytes", None),
    "retina.flow.is_reply": ("is_reply", None),
    "network.interface.index": ("ifindex", None),
    "retina.tcp.retransmits": ("retransmits", None),
    "retina.tcp.srtt_us": ("srtt_us", None),
    "retina.tcp.handshake_us": ("handshake_us", None),
    "dns.id": ("dns_id", None),
    "dns.question.type": ("dns_qtype", None),
    "dns.response_code": ("dns_rcode", None),
    "dns.latency_us": ("dns_latency_us", None),
}
_ADDRESSES = {"source.address": "src_ip", "destination.address": "dst_ip"}

ATTRIBUTES: tuple[str, ...] = (
    *_ADDRESSES,
    *_ENUMS,
    *_NUMBERS,
    "retina.drop.reason",
    "dns.question.name",
    *(f"{side}{key}" for side in SIDE_PREFIX.values() for key in (*ENDPOINT_KEYS, NETWORK_NAME)),
    "source.k8s.pod.label.<key>",
    "destination.k8s.pod.label.<key>",
)
"""What a condition can name (endpoint keys: ``k8s.namespace.name``, ``k8s.pod.label.<key>``,
``network.name``, ``retina.endpoint.kind``, ... as written by k8sattributes and networks)."""


# -- matchers on Python values (endpoint entries, strings) --------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


def _operators(path: str, spec: Any) -> dict[str, Any]:
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in _OPERATORS]
        if unknown:
            raise ConditionError(f"{path}: unknown operator {unknown[0]!r}; valid: {', '.join(_OPERATORS)}")
        if not spec:
            raise ConditionError(f"{path}: empty matcher")
        ops = dict(spec)
    elif isinstance(spec, (list, tuple)):
        ops = {"in": list(spec)}
    else:
        ops = {"eq": spec}
    if "in" in ops and not _as_list(ops["in"]):
        raise ConditionError(f"{path}: an empty list of values matches nothing; list at least one value")
    return ops


def _range(path: str, ops: Mapping[str, Any]) -> tuple[float | None, float | None]:
    lo, hi = ops.get("min"), ops.get("max")
    if "range" in ops:
        bounds = ops["range"]
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ConditionError(f"{path}.range: two numbers [min, max]")
        lo, hi = bounds
    for name, bound in (("min", lo), ("max", hi)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
            raise ConditionError(f"{path}.{name}: a number, not {bound!r}")
    return lo, hi


def _networks(path: str, values: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(str(v), strict=False) for v in _as_list(values)]
    except ValueError as exc:
        raise ConditionError(f"{path}.cidr: {exc}") from None


def compile_value_test(path: str, spec: Any) -> ValueTest:
    """A matcher on one Python value (``None``: the attribute is absent)."""
    ops = _operators(path, spec)
    tests: list[ValueTest] = []
    if "eq" in ops:
        want = ops["eq"]
        tests.append(lambda v: v is not None and (v == want or str(v) == str(want)))
    if "in" in ops:
        wanted = {str(x) for x in _as_list(ops["in"])}
        tests.append(lambda v: v is not None and str(v) in wanted)
    if "prefix" in ops:
        prefixes = tuple(str(p) for p in _as_list(ops["prefix"]))
        tests.append(lambda v: v is not None and str(v).startswith(prefixes))
    if "cidr" in ops:
        nets = _networks(path, ops["cidr"])

        def in_networks(v: Any) -> bool:
            try:
                address = ipaddress.ip_address(str(v))
            except ValueError:
                return False
            return any(address in n for n in nets if n.version == address.version)

        tests.append(in_networks)
    if "range" in ops or "min" in ops or "max" in ops:
        lo, hi = _range(path, ops)

        def in_range(v: Any) -> bool:
            try:
                x = float(v)
            except (TypeError, ValueError):
                return False
            return (lo is None or x >= lo) and (hi is None or x <= hi)

        tests.append(in_range)
    if "not" in ops:
        inner = compile_value_test(f"{path}.not", ops["not"])
        tests.append(lambda v: not inner(v))
    return lambda v: all(t(v) for t in tests)


# -- matchers on columns -------------------------------------------------------------------------------------


def cidr_words(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int, int]:
    """(high mask, high value, low mask, low value) of a network in the 16-byte flow form (IPv4 mapped)."""
    if net.version == 4:
        net = ipaddress.IPv6Network((int(ipaddress.IPv6Address(f"::ffff:{net.network_address}")), 96 + net.prefixlen))
    mask = int(net.netmask)
    value = int(net.network_address)
    full = (1 << 64) - 1
    return (mask >> 64) & full, (value >> 64) & full, mask & full, value & full


def address_words(column: npt.NDArray[np.void]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The 16-byte address column as two big-endian 64-bit words per row (native uint64 arrays)."""
    words = np.ascontiguousarray(column).view(">u8").reshape(-1, 2).astype(np.uint64)
    return words[:, 0], words[:, 1]


def _address_predicate(path: str, column: str, spec: Any) -> Predicate:
    ops = _operators(path, spec)
    bad = [k for k in ops if k in ("prefix", "range", "min", "max")]
    if bad:
        raise ConditionError(f"{path}: {bad[0]!r} does not apply to addresses; use eq, in, cidr or not")
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for key in ("eq", "in"):
        for v in _as_list(ops.get(key, [])):
            try:
                nets.append(ipaddress.ip_network(str(v)))
            except ValueError as exc:
                raise ConditionError(f"{path}.{key}: {exc} (an address, or a network in `cidr`)") from None
    if "cidr" in ops:
        nets.extend(_networks(path, ops["cidr"]))
    if ("eq" in ops or "in" in ops) and "cidr" in ops:
        raise ConditionError(f"{path}: use either eq/in or cidr")
    words = [cidr_words(n) for n in nets]
    inner = _address_predicate(f"{path}.not", column, ops["not"]) if "not" in ops else None

    def predicate(batch: FlowBatch) -> Mask:
        n = len(batch)
        hi, lo = address_words(batch.records[column])
        if words:
            out = np.zeros(n, dtype=bool)
            for mhi, vhi, mlo, vlo in words:
                out |= ((hi & np.uint64(mhi)) == np.uint64(vhi)) & ((lo & np.uint64(mlo)) == np.uint64(vlo))
        else:
            out = np.ones(n, dtype=bool)
        if inner is not None:
            out &= ~inner(batch)
        return out

    return predicate


def _number_predicate(
    path: str, column: str, present: str | None, spec: Any, names: Mapping[str, tuple[int, ...]] | None = None
) -> Predicate:
    ops = _operators(path, spec)
    if "prefix" in ops or "cidr" in ops:
        raise ConditionError(f"{path}: prefix and cidr apply to names and addresses, not to this attribute")

    def values(key: str) -> list[int]:
        out: list[int] = []
        for v in _as_list(ops[key]):
            if names is not None and isinstance(v, str):
                found = names.get(v.lower())
                if found is None:
                    raise ConditionError(f"{path}.{key}: unknown value {v!r}; valid: {', '.join(names)}")
                out.extend(found)
            elif isinstance(v, (bool, int)):
                out.append(int(v))
            else:
                raise ConditionError(f"{path}.{key}: {v!r} is not a valid value")
        return out

    wanted = [*(values("eq") if "eq" in ops else []), *(values("in") if "in" in ops else [])]
    ranged = "range" in ops or "min" in ops or "max" in ops
    lo, hi = _range(path, ops) if ranged else (None, None)
    inner = _number_predicate(f"{path}.not", column, None, ops["not"], names) if "not" in ops else None
    set_values = np.asarray(sorted(set(wanted)), dtype=np.int64)

    def predicate(batch: FlowBatch) -> Mask:
        col = batch.records[column]
        out = np.ones(len(batch), dtype=bool)
        if "eq" in ops or "in" in ops:
            out &= (col == set_values[0]) if set_values.size == 1 else np.isin(col, set_values)
        if lo is not None:
            out &= col >= lo
        if hi is not None:
            out &= col <= hi
        if inner is not None:
            out &= ~inner(batch)
        if present is not None:
            icmp = np.isin(batch.records["proto"], _ICMP)
            out &= icmp if present == "icmp" else ~icmp
        return out

    return predicate


class _TableCache:
    """A per-entry boolean vector for one endpoint table, recomputed when the table object changes."""

    def __init__(self, test: ValueTest, key: str) -> None:
        self._test = test
        self._key = key
        self._entries: object = None
        self._vector = np.zeros(1, dtype=bool)

    def vector(self, entries: Sequence[Mapping[str, Any]]) -> Mask:
        if entries is not self._entries:
            values = [self._test(e.get(self._key)) for e in entries]
            # One extra slot at the end for index -1 (no entry): the test of an absent attribute.
            self._vector = np.asarray([*values, self._test(None)], dtype=bool)
            self._entries = entries
        return self._vector


def _endpoint_predicate(path: str, side: str, key: str, spec: Any) -> Predicate:
    cache = _TableCache(compile_value_test(path, spec), key)
    column = f"{side}_endpoint"

    def predicate(batch: FlowBatch) -> Mask:
        vector = cache.vector(batch.endpoints.entries)
        index = batch.records[column]
        index = np.where((index >= 0) & (index < vector.size - 1), index, -1)
        out: Mask = vector[index]
        return out

    return predicate


def _drop_reason_predicate(path: str, spec: Any) -> Predicate:
    test = compile_value_test(path, spec)
    state: dict[str, Any] = {"n": -1, "vector": np.zeros(1, dtype=bool)}

    def predicate(batch: FlowBatch) -> Mask:
        names = STRINGS.names()
        if len(names) != state["n"]:
            state["vector"] = np.asarray([test(name or None) for name in names], dtype=bool)
            state["n"] = len(names)
        ids = batch.records["drop_reason"]
        vector = state["vector"]
        return np.where(ids < vector.size, vector[np.minimum(ids, vector.size - 1)], False)

    return predicate


def _dns_name_predicate(path: str, spec: Any) -> Predicate:
    test = compile_value_test(path, spec)

    def predicate(batch: FlowBatch) -> Mask:
        if batch.dns is None:
            return np.full(len(batch), test(None), dtype=bool)
        return np.fromiter((test(d.get("query") if d else None) for d in batch.dns), dtype=bool, count=len(batch))

    return predicate


def compile_matcher(path: str, attribute: str, spec: Any) -> Predicate:
    """The predicate of one ``attribute: matcher`` pair; ``path`` names it in errors."""
    if attribute in _ADDRESSES:
        return _address_predicate(path, _ADDRESSES[attribute], spec)
    if attribute in _ENUMS:
        column, names = _ENUMS[attribute]
        return _number_predicate(path, column, None, spec, names)
    if attribute in _NUMBERS:
        column, present = _NUMBERS[attribute]
        return _number_predicate(path, column, present, spec)
    if attribute == "retina.drop.reason":
        return _drop_reason_predicate(path, spec)
    if attribute == "dns.question.name":
        return _dns_name_predicate(path, spec)
    for side, prefix in SIDE_PREFIX.items():
        key = attribute[len(prefix) :]
        if attribute.startswith(prefix) and (
            key in ENDPOINT_KEYS or key == NETWORK_NAME or key.startswith(K8S_POD_LABEL_PREFIX)
        ):
            return _endpoint_predicate(path, side, key, spec)
    known = ", ".join(ATTRIBUTES)
    raise ConditionError(f"{path}: unknown attribute {attribute!r}; valid: {known}")


def compile_condition(path: str, condition: Any) -> Predicate:
    """All ``attribute: matcher`` pairs of a mapping must hold; ``not: {...}`` negates a nested one."""
    if not isinstance(condition, Mapping) or not condition:
        raise ConditionError(f"{path}: a condition is a non-empty mapping of attribute names to matchers")
    parts: list[Predicate] = []
    for attribute, spec in condition.items():
        name = str(attribute)
        if name == "not":
            inner = compile_condition(f"{path}.not", spec)
            parts.append(lambda batch, inner=inner: ~inner(batch))  # type: ignore[misc]
        else:
            parts.append(compile_matcher(f"{path}.{name}", name, spec))

    if len(parts) == 1:
        return parts[0]

    def predicate(batch: FlowBatch) -> Mask:
        out = parts[0](batch)
        for part in parts[1:]:
            out &= part(batch)
        return out

    return predicate
