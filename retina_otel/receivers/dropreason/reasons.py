"""The running kernel's ``skb_drop_reason`` names, resolved at run time (numbers differ between kernels).

Source of truth, in order: the ``__print_symbolic`` list in the ``skb:kfree_skb`` tracepoint's format
file (exactly the names the kernel itself prints for this tracepoint), then the ``enum skb_drop_reason``
in BTF. Nothing is baked in.

Which values are *not* drops: ``SKB_NOT_DROPPED_YET`` and ``SKB_CONSUMED`` (a normal free that went
through ``kfree_skb_reason``; since 6.x the kernel routes these to ``consume_skb``, but older kernels
can report them here). Their numbers come from BTF; without BTF, every value below the smallest value
the tracepoint names (``NOT_SPECIFIED``) is taken as "not a drop".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from retina_otel.bpf.btf import BtfError, kernel_btf

__all__ = ["DropReasons", "parse_print_symbolic", "resolve_reasons"]

TRACEFS_FORMATS = (
    Path("/sys/kernel/tracing/events/skb/kfree_skb/format"),
    Path("/sys/kernel/debug/tracing/events/skb/kfree_skb/format"),
)
_SYMBOLIC = re.compile(r"__print_symbolic\(\s*REC->reason\s*,(?P<body>.*)\)\s*$", re.S)
_PAIR = re.compile(r"\{\s*(-?\d+)\s*,\s*\"([A-Za-z0-9_]+)\"\s*\}")
_NOT_DROPS = ("SKB_NOT_DROPPED_YET", "SKB_CONSUMED")
_BTF_PREFIX = "SKB_DROP_REASON_"
_SUBSYS_SHIFT = 16


def parse_print_symbolic(format_text: str) -> dict[int, str]:
    """``{value: NAME}`` from the ``reason`` ``__print_symbolic`` list of a tracepoint format file."""
    match = _SYMBOLIC.search(format_text)
    if not match:
        return {}
    return {int(num): name for num, name in _PAIR.findall(match.group("body"))}


@dataclass(frozen=True, slots=True)
class DropReasons:
    """Names by kernel value, and the values that are not counted as drops."""

    names: Mapping[int, str]
    not_drops: frozenset[int]
    source: str  # "tracefs" or "btf"

    def name(self, value: int) -> str:
        found = self.names.get(value)
        if found is not None:
            return found
        if value >> _SUBSYS_SHIFT:
            # Subsystem reasons (mac80211, openvswitch, ...) carry the subsystem id in the high bits.
            return f"SUBSYS_{value >> _SUBSYS_SHIFT}_{value & 0xFFFF}"
        return f"UNKNOWN_{value}"

    def values_of(self, names: Iterable[str]) -> set[int]:
        wanted = set(names)
        return {v for v, n in self.names.items() if n in wanted}


def resolve_reasons(format_paths: Iterable[Path] = TRACEFS_FORMATS, *, use_btf: bool = True) -> DropReasons:
    names: dict[int, str] = {}
    source = ""
    for path in format_paths:
        try:
            names = parse_print_symbolic(path.read_text())
        except OSError:
            continue
        if names:
            source = "tracefs"
            break
    btf_enum: dict[str, int] = {}
    if use_btf:
        try:
            btf_enum = kernel_btf().enum("skb_drop_reason")
        except BtfError:
            btf_enum = {}
    if not names and btf_enum:
        source = "btf"
        names = {
            v: n.removeprefix(_BTF_PREFIX)
            for n, v in btf_enum.items()
            if n.startswith(_BTF_PREFIX) and n != "SKB_DROP_REASON_MAX"
        }
    if not names:
        raise RuntimeError(
            "cannot resolve skb drop reason names: no kfree_skb format in tracefs and no BTF enum"
        )
    not_drops = {btf_enum[n] for n in _NOT_DROPS if n in btf_enum}
    if not not_drops:
        not_drops = set(range(min(names)))
    top = max(names)
    if names[top] == "MAX":  # the enum's end marker, not a reason
        del names[top]
    return DropReasons(names=dict(names), not_drops=frozenset(not_drops), source=source)
