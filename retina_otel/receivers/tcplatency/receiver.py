"""The tcplatency receiver: handshake latency and smoothed RTT of every TCP flow, from raw tracepoints.

``inet_sock_set_state`` times each active open (SYN sent -> ESTABLISHED) and sees attempts that
never got a SYN/ACK (SYN sent -> CLOSE); ``tcp_probe`` gives the kernel's smoothed RTT on every
received segment. The kernel keeps one LRU entry per flow (local address first) and, for the API
server's addresses, whole-millisecond histograms, which become Retina's
``adv_node_apiserver_latency`` / ``adv_node_apiserver_tcp_handshake_latency`` (buckets 0 to 4.5 ms by
0.5, as Retina) and ``adv_node_apiserver_no_response``.

Differences from Retina, on purpose: Retina matches TCP timestamp options of single packets seen by
packetparser on the host interface; here the latency is the kernel's own RTT estimate (srtt) sampled on
every received segment of the node's API-server connections, which needs no per-packet events and
works for IPv6 and without TCP timestamps. "No response" counts connection attempts without a
SYN/ACK instead of packets unanswered within 500 ms.

The per-flow table is offered to the ``tcplatency`` processor as the ``tcp_latency`` extension, which
puts ``srtt_us`` and ``handshake_us`` on packetparser's flow records.
"""

from __future__ import annotations

import ctypes as ct
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from retina_otel.bpf import load_bpf
from retina_otel.component import CreateSettings, Host
from retina_otel.extension_keys import K8S_CACHE, TCP_LATENCY
from retina_otel.extensions import ExtensionKey
from retina_otel.flows import ip_to_bytes
from retina_otel.k8s.apiserver import ApiServerLocator
from retina_otel.metrics.store import Family
from retina_otel.receivers._periodic import Worker
from retina_otel.receivers.tcplatency.config import TcpLatencyConfig
from retina_otel.receivers.tcplatency.table import LatencyTable

__all__ = [
    "APISERVER_BUCKETS_MS",
    "FLOW_KEY_DTYPE",
    "FLOW_VALUE_DTYPE",
    "LatencyTable",
    "TcpLatencyReceiver",
    "bloom_bit",
]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("tcplatency.bpf.c")
HIST_SLOTS = 64
APISERVER_BUCKETS_MS = tuple(i * 0.5 for i in range(10))  # Retina: linear, start 0, width 0.5, count 10

FLOW_KEY_DTYPE = np.dtype([("saddr", "V16"), ("daddr", "V16"), ("sport", "<u2"), ("dport", "<u2"), ("pad", "<u4")])
FLOW_VALUE_DTYPE = np.dtype(
    [
        ("first_ns", "<u8"),
        ("last_jiffies", "<u8"),
        ("srtt_us", "<u4"),
        ("min_srtt_us", "<u4"),
        ("samples", "<u4"),
        ("handshake_us", "<u4"),
        ("api_gen", "<u4"),
        ("apiserver", "u1"),
        ("pad", "V3"),
    ]
)

# The raw tracepoints' arguments the programs read (ctx->args[i]), checked against BTF at start.
TRACEPOINT_ARGS = {
    "inet_sock_set_state": ["struct sock *", "int", "int"],
    "tcp_probe": ["struct sock *", "struct sk_buff *"],
}


def _btf_cflags() -> list[str]:
    """The running kernel's sock/tcp_sock member offsets as -D flags, after checking from BTF that the
    raw tracepoints pass the arguments the programs read (a clear error at start otherwise)."""
    from retina_otel.bpf.btf import kernel_btf, require_tracepoint_args

    btf = kernel_btf()
    for name, args in TRACEPOINT_ARGS.items():
        require_tracepoint_args(btf, name, args)
    common = btf.member("sock", "__sk_common").offset
    skc = {
        "OFF_SKC_DADDR": ("skc_daddr", 4),
        "OFF_SKC_RCV_SADDR": ("skc_rcv_saddr", 4),
        "OFF_SKC_DPORT": ("skc_dport", 2),
        "OFF_SKC_NUM": ("skc_num", 2),
        "OFF_SKC_FAMILY": ("skc_family", 2),
        "OFF_SKC_V6_DADDR": ("skc_v6_daddr", 16),
        "OFF_SKC_V6_RCV_SADDR": ("skc_v6_rcv_saddr", 16),
    }
    offsets: dict[str, int] = {}
    for macro, (member, size) in skc.items():
        info = btf.sized_member("sock_common", member, size)
        if info.offset % min(size, 8):
            raise RuntimeError(f"unexpected layout of sock_common.{member}: {info}")
        offsets[macro] = common + info.offset
    offsets["OFF_SK_PROTOCOL"] = btf.sized_member("sock", "sk_protocol", 2).offset
    offsets["OFF_SRTT_US"] = btf.sized_member("tcp_sock", "srtt_us", 4).offset
    # One read covers the sock_common members: [base, base + span), 8-byte aligned (natural alignment
    # of the members in the program's stack copy).
    ends = [offsets[m] + size for m, (_, size) in skc.items()]
    base = min(offsets[m] for m in skc) // 8 * 8
    span = (max(ends) - base + 7) // 8 * 8
    if span > 256:
        raise RuntimeError(f"sock_common members spread over {span} bytes; the program reads at most 256")
    return [f"-D{k}={v}" for k, v in offsets.items()] + [f"-DSKC_BASE={base}", f"-DSKC_SPAN={span}"]


def bloom_bit(address: bytes) -> int:
    """The bit of a 16-byte (IPv4-mapped) address in the kernel's ``apiserver_bloom``: the top 6 bits of
    the Fibonacci hash of its last 8 bytes, read little-endian as the program reads them (x86-64, arm64)."""
    low = int.from_bytes(address[8:16], "little")
    return 1 << (((low * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 58)


class TcpLatencyReceiver:
    def __init__(self, settings: CreateSettings, config: TcpLatencyConfig) -> None:
        self.id = settings.id
        self.config = config
        self._bpf: Any = None
        self._host: Host | None = None
        self._poller = Worker(self.id)
        self._lock = threading.Lock()
        self._table = LatencyTable(np.zeros(0, FLOW_KEY_DTYPE), np.zeros(0, FLOW_VALUE_DTYPE))
        self._flow_users = 0  # track_flows() calls (or a first table()) not yet undone: the per-flow table
        self._prev_latency = np.zeros(HIST_SLOTS, dtype=np.int64)
        self._prev_handshake = np.zeros(HIST_SLOTS, dtype=np.int64)
        self._prev_counters = np.zeros(2, dtype=np.int64)
        self._latency: Family | None = None
        self._handshake: Family | None = None
        self._no_response: Family | None = None
        self._locator: ApiServerLocator | None = None

    # -- the extension other components use ---------------------------------------------------------
    def table(self) -> LatencyTable:
        """The flow snapshot of the last read. The kernel's flow table is copied out only once something
        has asked for it (:meth:`track_flows`, or this call): a first call without it reads the table now,
        later reads follow ``interval``."""
        if not self._table_wanted:
            self.track_flows()  # for good: a caller that never said it wants the table
            bpf = self._bpf
            if bpf is not None:
                self._refresh_table(bpf)
        with self._lock:
            return self._table

    @property
    def _table_wanted(self) -> bool:
        return self._flow_users > 0

    def track_flows(self) -> None:
        """Keep the per-flow table from now on, until as many :meth:`untrack_flows` (the tcplatency
        processor calls this when it starts, before the receivers start, or while a client follows live
        flows when only the observer reads RTTs). While nothing wants it, the kernel programs follow only
        connections to the API server (the histograms) and the flow table stays empty: under many short
        connections that is most of this receiver's kernel cost."""
        with self._lock:
            self._flow_users += 1
            if self._flow_users == 1:
                self._write_tracking(True)

    def untrack_flows(self) -> None:
        """Undo one :meth:`track_flows`; the last one stops the per-flow table (its entries age out of the
        kernel's LRU table; the snapshot is dropped)."""
        with self._lock:
            if self._flow_users == 0:
                return
            self._flow_users -= 1
            if self._flow_users == 0:
                self._write_tracking(False)
                self._table = LatencyTable(np.zeros(0, FLOW_KEY_DTYPE), np.zeros(0, FLOW_VALUE_DTYPE))

    def _write_tracking(self, on: bool) -> None:
        if self._bpf is not None:
            self._bpf["track_flows"][ct.c_int(0)] = ct.c_uint32(1 if on else 0)

    def _refresh_table(self, bpf: Any) -> None:
        from retina_otel.bpf.mapbatch import drain

        keys, values = drain(bpf["flows"], FLOW_KEY_DTYPE, FLOW_VALUE_DTYPE, delete=False)
        table = LatencyTable(keys, values)
        with self._lock:
            if self._table_wanted:  # not dropped by untrack_flows meanwhile
                self._table = table

    def extensions(self) -> dict[ExtensionKey[Any] | str, object]:
        """Itself as ``tcp_latency``: the RTT table the tcplatency processor joins flow records with."""
        return {TCP_LATENCY: self}

    def apiserver_ips(self) -> list[str]:
        """The API server's addresses in the kernel now (see :mod:`retina_otel.k8s.apiserver`)."""
        return self._locator.addresses() if self._locator is not None else []

    def _make_locator(self, host: Host) -> ApiServerLocator:
        """Override, EndpointSlice watch (with the agent's Kubernetes source settings) and
        $KUBERNETES_SERVICE_HOST, as the config asks."""
        config = self.config
        watch: Any = None
        if not config.apiserver_ips and config.apiserver_discovery != "off":
            shared = host.get_extension(K8S_CACHE)
            watch = shared.api_settings() if shared is not None else None
            if watch is None and config.apiserver_discovery == "kubernetes":
                from retina_otel.k8s.watch import ClientSettings

                watch = ClientSettings()

        def on_error(resource: str, reason: str) -> None:
            host.count_lost("k8s_watch", f"{resource}:{reason}", 1)

        return ApiServerLocator(
            self.set_apiserver_ips,
            override=config.apiserver_ips,
            use_service_host=config.use_kubernetes_service_host,
            watch=watch,
            on_error=on_error,
        )

    def set_apiserver_ips(self, ips: list[str]) -> None:
        """Replace the API server's addresses in the kernel (e.g. from the k8s cache)."""
        if self._bpf is None:
            return
        log.info("%s: API server addresses %s", self.id, ", ".join(ips) or "(none)")
        addresses = [ip_to_bytes(ip) for ip in ips]
        bits = 0
        for address in addresses:
            bits |= bloom_bit(address)
        bloom = self._bpf["apiserver_bloom"]
        # The filter stays a superset of the table: the new bits before the table changes, the old ones
        # dropped only once it has.
        bloom[ct.c_int(0)] = ct.c_uint64(bloom[ct.c_int(0)].value | bits)
        table = self._bpf["apiserver_ips"]
        table.clear()
        one = ct.c_ubyte(1)
        for address in addresses:
            key = table.Key()
            ct.memmove(ct.byref(key), address, 16)
            table[key] = one
        bloom[ct.c_int(0)] = ct.c_uint64(bits)
        # Flows decided their API-server flag once; a new generation makes each re-decide on its next
        # segment (after the table above is complete).
        gen = self._bpf["apiserver_gen"]
        gen[ct.c_int(0)] = ct.c_uint32((gen[ct.c_int(0)].value + 1) & 0xFFFFFFFF)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        if self._bpf is not None:
            return
        self._host = host
        cflags = [f"-DMAX_FLOWS={self.config.max_flows}", f"-DHIST_SLOTS={HIST_SLOTS}", *_btf_cflags()]
        self._bpf = load_bpf(SOURCE, cflags)  # bcc attaches both RAW_TRACEPOINT_PROBEs on load
        with self._lock:
            if self._table_wanted:
                self._write_tracking(True)
        self._locator = self._make_locator(host)
        self._locator.start()
        if self.config.apiserver_metrics:
            store = host.metrics
            self._latency = store.histogram(
                "networkobservability_adv_node_apiserver_latency",
                "Latency of node apiserver in ms",
                (),
                APISERVER_BUCKETS_MS,
                unit="ms",
            )
            self._handshake = store.histogram(
                "networkobservability_adv_node_apiserver_tcp_handshake_latency",
                "Latency of node apiserver tcp handshake in ms",
                (),
                APISERVER_BUCKETS_MS,
                unit="ms",
            )
            self._no_response = store.counter(
                "networkobservability_adv_node_apiserver_no_response",
                "Number of connection attempts to the node apiserver that got no response",
                ("no_response",),
            )
        self._poller.run_every(
            self.config.interval, self.poll, log=log, failure=f"{self.id}: reading the kernel tables failed"
        )

    def _array(self, name: str, size: int) -> npt.NDArray[np.int64]:
        table = self._bpf[name]
        return np.array([table[ct.c_int(i)].value for i in range(size)], dtype=np.int64)

    def poll(self) -> None:
        """Read the kernel tables now: refresh the flow snapshot and publish the histogram deltas."""
        assert self._bpf is not None and self._host is not None
        if self._table_wanted:
            self._refresh_table(self._bpf)
        latency = self._array("api_latency_hist", HIST_SLOTS)
        handshake = self._array("api_handshake_hist", HIST_SLOTS)
        counters = self._array("counters", 2)
        self._publish(self._latency, latency - self._prev_latency)
        self._publish(self._handshake, handshake - self._prev_handshake)
        new_counters = counters - self._prev_counters
        if self._no_response is not None and new_counters[0]:
            self._no_response.add(("no_response",), float(new_counters[0]))
        if new_counters[1]:
            self._host.count_lost("tcplatency", "flow_map_update_failed", int(new_counters[1]))
        self._prev_latency, self._prev_handshake, self._prev_counters = latency, handshake, counters

    @staticmethod
    def _publish(family: Family | None, delta: npt.NDArray[np.int64]) -> None:
        """Whole-millisecond slot counts -> observations (slot i is i ms; the last slot is a floor)."""
        if family is None or not delta.any():
            return
        values = np.repeat(np.arange(len(delta), dtype=np.float64), delta)
        family.observe_many((), values)

    def shutdown(self) -> None:
        if self._locator is not None:
            self._locator.shutdown()
            self._locator = None
        self._poller.stop(timeout=5)
        if self._bpf is not None:
            try:
                self.poll()
            except Exception:
                log.debug("final poll failed", exc_info=True)
            self._bpf.cleanup()
            self._bpf = None
