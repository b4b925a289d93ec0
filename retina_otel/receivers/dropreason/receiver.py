"""The dropreason receiver: loads the kfree_skb raw-tracepoint program, drains its maps, publishes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from retina_otel.bpf.clock import wall_offset_ns
from retina_otel.bpf.counters import CounterDeltas
from retina_otel.component import CreateSettings, FlowConsumer, Host
from retina_otel.flows import STRINGS, Direction, Event, FlowBatch, ObservationPoint, Verdict
from retina_otel.metrics.store import Family
from retina_otel.receivers._periodic import DrainingReceiver
from retina_otel.receivers.dropreason.categories import STACK_REASONS
from retina_otel.receivers.dropreason.config import DropReasonConfig
from retina_otel.receivers.dropreason.reasons import DropReasons, resolve_reasons
from retina_otel.receivers.dropreason.retinanames import retina_direction, retina_reason

__all__ = ["FLOW_KEY_DTYPE", "FLOW_VALUE_DTYPE", "DropReasonReceiver"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("dropreason.bpf.c")

# Must match struct drop_key / drop_val / total_key / total_val in dropreason.bpf.c.
FLOW_KEY_DTYPE = np.dtype(
    [
        ("reason", "<u4"),
        ("ifindex", "<u4"),
        ("saddr", "V16"),
        ("daddr", "V16"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("proto", "u1"),
        ("ip_version", "u1"),
        ("direction", "u1"),
        ("pad", "u1"),
    ]
)
FLOW_VALUE_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8"), ("first_ns", "<u8"), ("last_ns", "<u8")])
TOTAL_KEY_DTYPE = np.dtype([("reason", "<u4"), ("direction", "<u4")])
TOTAL_VALUE_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8")])

_DIRECTION_LABEL = {int(Direction.INGRESS): "ingress", int(Direction.EGRESS): "egress"}
_LOST_REASONS = ("flow_map_full", "totals_map_full")


# The raw tracepoint's arguments the program reads (ctx->args[0..2]); a 4th (rx_sk) may follow.
KFREE_SKB_ARGS = ["struct sk_buff *", "void *", "enum skb_drop_reason"]


def _btf_cflags() -> list[str]:
    """The running kernel's sk_buff/net_device member offsets, as -D flags for the BPF program.

    Also checks, from BTF, that the ``kfree_skb`` raw tracepoint passes the arguments the program reads.
    """
    from retina_otel.bpf.btf import kernel_btf, require_tracepoint_args

    btf = kernel_btf()
    require_tracepoint_args(btf, "kfree_skb", KFREE_SKB_ARGS)
    skb_fields = {
        "OFF_HEAD": ("head", 8),
        "OFF_NETWORK_HEADER": ("network_header", 2),
        "OFF_LEN": ("len", 4),
        "OFF_DEV": ("dev", 8),
        "OFF_SKB_IIF": ("skb_iif", 4),
        "OFF_PROTOCOL": ("protocol", 2),
    }
    wanted = {macro: ("sk_buff", member, size) for macro, (member, size) in skb_fields.items()}
    wanted["OFF_DEV_IFINDEX"] = ("net_device", "ifindex", 4)
    flags = []
    span: list[int] = []
    for macro, (struct_name, member, size) in wanted.items():
        info = btf.sized_member(struct_name, member, size)
        flags.append(f"-D{macro}={info.offset}")
        if struct_name == "sk_buff":
            span += [info.offset, info.offset + size]
    # The sk_buff bytes holding all six members: one probe read instead of six (when <= 256 bytes).
    flags += [f"-DSKB_BASE={min(span)}", f"-DSKB_SPAN={max(span) - min(span)}"]
    return flags


def _any_of(values: list[int]) -> str:
    """A C condition on ``r``: true for any of ``values`` (``0`` for none)."""
    return " || ".join(f"(r) == {v}u" for v in values) or "0"


class DropReasonReceiver(DrainingReceiver[DropReasonConfig]):
    """See the package docstring. ``flush()`` drains now (tests call it for deterministic results)."""

    kind = "dropreason"

    def __init__(
        self, settings: CreateSettings, config: DropReasonConfig, next_consumer: FlowConsumer | None
    ) -> None:
        super().__init__(settings, config, next_consumer)
        self._reasons: DropReasons | None = None
        self._count: Family | None = None
        self._bytes: Family | None = None
        self._stack_count: Family | None = None
        self._stack_bytes: Family | None = None
        self._stack_values = np.zeros(0, dtype=np.uint32)  # reasons counted as stack discards
        self._lost = CounterDeltas(len(_LOST_REASONS))

    @property
    def reasons(self) -> DropReasons | None:
        return self._reasons

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        from retina_otel.bpf import load_bpf

        self._host = host
        reasons = resolve_reasons()
        unknown = set(self.config.exclude_reasons) - set(reasons.names.values())
        if unknown:
            log.warning("dropreason: exclude_reasons not known to this kernel: %s", sorted(unknown))
        skipped = sorted(reasons.not_drops | reasons.values_of(self.config.exclude_reasons))
        stack = sorted(reasons.values_of(STACK_REASONS)) if self.config.stack_discards == "separate" else []
        cflags = [
            f"-DIS_NOT_A_DROP(r)=({_any_of(skipped)})",
            f"-DIS_STACK_DISCARD(r)=({_any_of(stack)})",
            f"-DMAX_FLOWS={self.config.max_flows}",
            *_btf_cflags(),
        ]
        self._reasons = reasons
        self._stack_values = np.array(stack, dtype=np.uint32)
        self._count = host.metrics.counter(
            "networkobservability_drop_count", "Total dropped packets", ("reason", "direction")
        )
        self._bytes = host.metrics.counter(
            "networkobservability_drop_bytes", "Total dropped bytes", ("reason", "direction"), unit="By"
        )
        if stack:
            self._stack_count = host.metrics.counter(
                "networkobservability_stack_discard_count",
                "Packets the kernel freed as its own housekeeping (socket close, queue purge, ...), not drops",
                ("reason", "direction"),
            )
            self._stack_bytes = host.metrics.counter(
                "networkobservability_stack_discard_bytes",
                "Bytes of packets the kernel freed as its own housekeeping, not drops",
                ("reason", "direction"),
                unit="By",
            )
        # bcc attaches the RAW_TRACEPOINT_PROBE on load; until the switch is set, the program writes drop_flows0
        self._start_draining(load_bpf(SOURCE, cflags), flows="drop_flows")

    # -- draining ---------------------------------------------------------------------------------
    def _drain(self, bpf: Any, host: Host) -> FlowBatch | None:
        """Metrics from the cumulative totals; the dropped flows of the interval as one batch."""
        from retina_otel.bpf.mapbatch import drain

        if self._reasons is None or self._flows is None:
            return None
        totals_k, totals_v = drain(bpf["drop_totals"], TOTAL_KEY_DTYPE, TOTAL_VALUE_DTYPE, delete=False)
        keys, values = drain(bpf[self._flows.swap()], FLOW_KEY_DTYPE, FLOW_VALUE_DTYPE)
        self._publish_metrics(totals_k, totals_v)
        self._count_lost(bpf)
        return self._batch(keys, values) if len(keys) else None

    def _publish_metrics(self, keys: np.ndarray, values: np.ndarray) -> None:
        assert self._count is not None and self._bytes is not None
        stack = np.isin(keys["reason"], self._stack_values)
        self._publish(keys[~stack], values[~stack], self._count, self._bytes)
        if self._stack_count is not None and self._stack_bytes is not None:
            self._publish(keys[stack], values[stack], self._stack_count, self._stack_bytes)

    def _publish(self, keys: np.ndarray, values: np.ndarray, count: Family, size_family: Family) -> None:
        assert self._reasons is not None
        if len(keys) == 0:
            return
        labels = [
            self._label(self._reasons.name(int(r)), _DIRECTION_LABEL.get(int(d), "unknown"))
            for r, d in zip(keys["reason"].tolist(), keys["direction"].tolist(), strict=True)
        ]
        # Cumulative totals read from the kernel (never deleted there), so nothing is lost between reads.
        # Several kernel (reason, direction) pairs can share a Retina label: their totals add up.
        packets: dict[tuple[str, str], float] = {}
        size: dict[tuple[str, str], float] = {}
        for label, p, b in zip(labels, values["packets"].tolist(), values["bytes"].tolist(), strict=True):
            packets[label] = packets.get(label, 0.0) + p
            size[label] = size.get(label, 0.0) + b
        count.set_many(packets.items())
        size_family.set_many(size.items())

    def _label(self, reason: str, direction: str) -> tuple[str, str]:
        if self.config.reason_names == "retina":
            reason = retina_reason(reason)
            return reason, retina_direction(reason)
        return reason, direction

    def _reason_name(self, value: int) -> str:
        assert self._reasons is not None
        name = self._reasons.name(value)
        return retina_reason(name) if self.config.reason_names == "retina" else name

    def _count_lost(self, bpf: Any) -> None:
        assert self._host is not None
        for reason, delta in zip(_LOST_REASONS, self._lost.read(bpf["drop_lost"]), strict=True):
            if delta > 0:
                self._host.count_lost("dropreason", reason, delta)

    def _batch(self, keys: np.ndarray, values: np.ndarray) -> FlowBatch:
        assert self._reasons is not None and self._host is not None
        n = len(keys)
        batch = FlowBatch.empty(n, receiver=self.settings.id)
        r = batch.records
        offset = wall_offset_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        r["time_start_ns"] = values["first_ns"] + offset
        r["time_end_ns"] = np.maximum(values["last_ns"], values["first_ns"]) + offset
        r["src_ip"] = keys["saddr"]
        r["dst_ip"] = keys["daddr"]
        r["src_port"] = keys["sport"]
        r["dst_port"] = keys["dport"]
        r["proto"] = keys["proto"]
        r["ip_version"] = keys["ip_version"]
        r["direction"] = keys["direction"]
        r["ifindex"] = keys["ifindex"]
        r["observation_point"] = ObservationPoint.STACK
        r["verdict"] = Verdict.DROPPED
        r["event"] = Event.DROP
        r["packets"] = values["packets"]
        r["bytes"] = values["bytes"]
        unique, inverse = np.unique(keys["reason"], return_inverse=True)
        ids = np.array([STRINGS.intern(self._reason_name(int(v))) for v in unique.tolist()], dtype=np.uint32)
        r["drop_reason"] = ids[inverse]
        batch.attributes["k8s.node.name"] = self._host.node_name
        return batch
