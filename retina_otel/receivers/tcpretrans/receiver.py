"""The tcpretrans receiver: loads the tracepoint program, drains its map every interval, publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retina_otel.bpf.clock import wall_offset_ns
from retina_otel.bpf.counters import CounterDeltas
from retina_otel.component import CreateSettings, FlowConsumer, Host
from retina_otel.flows import Direction, Event, FlowBatch, ObservationPoint, Verdict
from retina_otel.metrics.store import Family
from retina_otel.receivers._periodic import DrainingReceiver
from retina_otel.receivers.tcpretrans.config import TcpRetransConfig

__all__ = ["FLOW_KEY_DTYPE", "FLOW_VALUE_DTYPE", "TcpRetransReceiver"]

SOURCE = Path(__file__).with_name("tcpretrans.bpf.c")
TRACEFS = Path("/sys/kernel/tracing/events/tcp")

# Must match struct retrans_key / retrans_val in tcpretrans.bpf.c.
FLOW_KEY_DTYPE = np.dtype([("saddr", "V16"), ("daddr", "V16"), ("sport", "<u2"), ("dport", "<u2"), ("pad", "<u4")])
FLOW_VALUE_DTYPE = np.dtype(
    [("segments", "<u8"), ("first_ns", "<u8"), ("last_ns", "<u8"), ("events", "<u4"), ("states", "<u4")]
)
_V4_PREFIX = np.frombuffer(b"\x00" * 10 + b"\xff\xff", dtype=np.uint8)


def _cflags(config: TcpRetransConfig, tracefs: Path = TRACEFS) -> list[str]:
    from retina_otel.bpf.btf import kernel_btf

    btf = kernel_btf()
    cb = btf.member("sk_buff", "cb")
    gso = btf.member("tcp_skb_cb", "tcp_gso_segs")
    if gso.size != 2 or gso.offset + 2 > cb.size:
        raise RuntimeError(f"unexpected layout of tcp_skb_cb.tcp_gso_segs: {gso}")
    flags = [f"-DMAX_FLOWS={config.max_flows}", f"-DOFF_SKB_CB={cb.offset}", f"-DOFF_GSO_SEGS={gso.offset}"]
    fmt = (tracefs / "tcp_retransmit_skb" / "format").read_text()
    if " err;" in fmt:
        flags.append("-DHAVE_ERR")
    if config.include_synack and (tracefs / "tcp_retransmit_synack" / "format").exists():
        flags.append("-DHAVE_SYNACK")
    return flags


class TcpRetransReceiver(DrainingReceiver[TcpRetransConfig]):
    """See the package docstring. ``flush()`` drains now (tests call it for deterministic results)."""

    kind = "tcpretrans"

    def __init__(
        self, settings: CreateSettings, config: TcpRetransConfig, next_consumer: FlowConsumer | None
    ) -> None:
        super().__init__(settings, config, next_consumer)
        self._total: Family | None = None
        self._counters = CounterDeltas(2)  # slot 0: segments, 1: not in the flow map

    def start(self, host: Host) -> None:
        from retina_otel.bpf import load_bpf

        self._host = host
        cflags = _cflags(self.config)
        self._total = host.metrics.counter(
            "networkobservability_tcpretrans_count",
            "Total TCP retransmitted segments on the node (all network namespaces)",
        )
        # bcc attaches the TRACEPOINT_PROBEs on load; until the switch is set, the program writes retrans_flows0
        self._start_draining(load_bpf(SOURCE, cflags), flows="retrans_flows")

    def _drain(self, bpf: Any, host: Host) -> FlowBatch | None:
        """The node total from the segment counter; the retransmitting flows of the interval as one batch."""
        from retina_otel.bpf.mapbatch import drain

        if self._total is None or self._flows is None:
            return None
        keys, values = drain(bpf[self._flows.swap()], FLOW_KEY_DTYPE, FLOW_VALUE_DTYPE)
        segments, unmapped = self._counters.read(bpf["retrans_counters"])
        if segments:
            self._total.add((), segments)
        if unmapped:
            host.count_lost("tcpretrans", "flow_map_full", unmapped)
        return self._batch(keys, values) if len(keys) else None

    def _batch(self, keys: np.ndarray, values: np.ndarray) -> FlowBatch:
        assert self._host is not None
        batch = FlowBatch.empty(len(keys), receiver=self.settings.id)
        r = batch.records
        offset = wall_offset_ns()
        r["time_start_ns"] = values["first_ns"] + offset
        r["time_end_ns"] = np.maximum(values["last_ns"], values["first_ns"]) + offset
        r["src_ip"] = keys["saddr"]
        r["dst_ip"] = keys["daddr"]
        r["src_port"] = keys["sport"]
        r["dst_port"] = keys["dport"]
        prefix = np.ascontiguousarray(keys["saddr"]).view(np.uint8).reshape(-1, 16)[:, :12]
        r["ip_version"] = np.where((prefix == _V4_PREFIX).all(axis=1), 4, 6)
        r["proto"] = 6
        r["direction"] = Direction.EGRESS
        r["observation_point"] = ObservationPoint.STACK
        r["verdict"] = Verdict.FORWARDED
        r["event"] = Event.RETRANSMIT
        r["retransmits"] = np.minimum(values["segments"], np.iinfo(np.uint32).max)
        r["packets"] = values["segments"]
        batch.attributes["k8s.node.name"] = self._host.node_name
        return batch
