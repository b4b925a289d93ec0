"""The packetparser receiver: TC programs on pod veths and the host interface, flow records out.

Threads (all started in :meth:`PacketParserReceiver.start`):

* ``packetparser-reader``: every 0.1 s copies the ring buffer's committed reports straight into the
  pending ``FLOW_DTYPE`` rows (:class:`~.kernel.RingBufReader`; a report is the first 136 bytes of a flow
  record, see records.py), completes them in bulk and hands them to the next consumer every
  ``batch_interval`` or when ``max_batch_size`` rows are pending; every ``report_interval`` it flushes the
  connection table (unreported counters of idle flows) and publishes the kernel's statistics.
* ``packetparser-links``: netlink link events -> attach to new interfaces, forget vanished ones.

Exact totals: counters live in the kernel table until a report takes them with an atomic exchange;
a report that cannot be written (ring buffer full) leaves them in place for the next one, and
:meth:`flush` / :meth:`shutdown` move whatever is left into rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from retina_otel.bpf import load_bpf
from retina_otel.bpf.chain import OBSERVATION_POINTS, PendingChain
from retina_otel.bpf.clock import kernel_hz, wall_offset_ns
from retina_otel.bpf.directchain import DirectChain
from retina_otel.bpf.doublebuffer import DoubleBuffer
from retina_otel.bpf.mapbatch import iter_batches, lookup_batch, update_batch
from retina_otel.bpf.ringsize import ring_pages
from retina_otel.bpf.tc import FilterSpec
from retina_otel.component import ComponentStatus, CreateSettings, FlowConsumer, Host
from retina_otel.errorlog import RepeatedError
from retina_otel.extension_keys import DNS_CHAIN, IP_FILTER
from retina_otel.extensions import ExtensionKey
from retina_otel.flows import FLOW_DTYPE, FlowBatch, copy_rows
from retina_otel.metrics.store import Family
from retina_otel.wakeup import Wakeup

from .closereports import CloseReportGuard
from .config import PacketParserConfig
from .ctmetrics import ConntrackMetrics
from .filtermap import lpm_keys
from .kernel import RingBufReader, prog_test_run
from .records import (
    CT_ENTRY_DTYPE,
    CT_KEY_DTYPE,
    HOT_SLOT_DTYPE,
    LOST_STATS,
    RINGBUF_RECORD_DTYPE,
    STAT_NAMES,
    complete_rows,
    report_bytes,
    report_cflags,
)

__all__ = [
    "BPF_SOURCE",
    "FILTER_SPEC",
    "PARSED_PACKETS",
    "PacketParserReceiver",
    "adaptive_close_reports",
    "build_cflags",
    "report_mode",
    "uses_fast_path",
]

log = logging.getLogger(__name__)

BPF_SOURCE = Path(__file__).with_name("packetparser.bpf.c")
FILTER_SPEC = FilterSpec(name="retina_otel_packetparser", prio=0x1E7, handle=0x1E7A)
FLUSH_BATCH = 256
HOT_SLOTS = 1024
"""Slots per CPU in each half of high aggregation's flow cache (``struct hot_slot``, 112 bytes)."""
PARSED_PACKETS = "controlplane_networkobservability_parsed_packets_counter"
"""Retina's control-plane counter, no labels: here the kernel's ``packets`` statistic (every packet
parsed and counted into the connection table, after the IP filter and sampling)."""
_ST_PACKETS = STAT_NAMES.index("packets")
_ST_CREATED = STAT_NAMES.index("conntrack_created")
# The reader sleeps until the ring buffer has reports (its fd polls readable) or a timer is due, then
# reads at most every _POLL_SECONDS while reports keep coming: busy periods still arrive in large
# batches, and an idle node wakes the thread only for the 1-s statistics. The 8 MiB default ring holds
# ~60,000 reports, so 0.1 s keeps up with 600,000 reports/s before the kernel counts ringbuf_full.
_POLL_SECONDS = 0.1
_STATS_SECONDS = 1.0
_READ_CHUNK = 8192  # connection-table entries read at a time when flushing (~3 MB)
_HANDOFF_FRACTION = 2
"""A batch of at least 1/_HANDOFF_FRACTION of the pending buffer's rows is handed on as the buffer itself
(a new one takes its place), a smaller one as a copy (~5 ns a row): a queued batch never holds more than
twice its rows' memory (the OTLP exporter's queue is bounded in rows)."""

_POINTS = OBSERVATION_POINTS
"""Observation points in the order of their numbers (OBS_* in pp_common.h, 1-based)."""


def _jiffy_ns(config: PacketParserConfig) -> int:
    """ns per jiffy for high aggregation's clock, or 0 (coarse clock) when HZ is unknown or not a divisor."""
    if config.aggregation != "high":
        return 0
    hz = kernel_hz()
    return 1_000_000_000 // hz if hz and 1_000_000_000 % hz == 0 else 0


def uses_fast_path(config: PacketParserConfig) -> bool:
    """Whether the interfaces get the small fast-path programs (``pp_fast_*``, see pp_fastpath.h)."""
    return config.aggregation == "high" and config.bypass_lookup_ip_of_interest and config.sampling_rate == 1


ReportMode = Literal["events", "close", "switched"]


def report_mode(config: PacketParserConfig, only_sums: bool = False, on_demand: bool = False) -> ReportMode:
    """The kernel's report rule (REPORT_EVENTS in pp_common.h): ``events`` (Retina's) always in low
    aggregation; in high, ``report_rule`` decides, ``auto`` by ``only_sums`` (everything reading the
    records sums them: :attr:`~retina_otel.component.CreateSettings.only_sums`): ``close`` then, or
    ``switched`` (at run time, by an event demand) when some of them read each record only on demand."""
    if config.aggregation == "low" or config.report_rule == "events":
        return "events"
    if config.report_rule == "close":
        return "close"
    if not only_sums:
        return "events"
    return "switched" if on_demand else "close"


_REPORT_EVENTS = {"close": 0, "events": 1, "switched": 2}


def adaptive_close_reports(config: PacketParserConfig, only_sums: bool = False, on_demand: bool = False) -> bool:
    """Whether the close rule's record on FIN/RST follows the connection table's fill (CLOSE_REPORTS=2,
    :mod:`.closereports`): ``report_on_close: auto`` with a rule that can be ``close``."""
    return config.report_on_close == "auto" and report_mode(config, only_sums, on_demand) != "events"


def build_cflags(config: PacketParserConfig, only_sums: bool = False, on_demand: bool = False) -> list[str]:
    return [
        f"-DREPORT_EVENTS={_REPORT_EVENTS[report_mode(config, only_sums, on_demand)]}",
        f"-DJIFFY_NS={_jiffy_ns(config)}ULL",
        f"-DAGG_HIGH={1 if config.aggregation == 'high' else 0}",
        f"-DFAST_PATH={1 if uses_fast_path(config) else 0}",
        f"-DSAMPLING_RATE={config.sampling_rate}",
        f"-DREPORT_INTERVAL_NS={int(config.report_interval * 1e9)}ULL",
        f"-DCT_MAX_ENTRIES={config.conntrack_max_entries}",
        f"-DFILTER_MAX_ENTRIES={config.filter_map_max_entries}",
        f"-DBYPASS_FILTER={1 if config.bypass_lookup_ip_of_interest else 0}",
        f"-DRINGBUF_PAGES={ring_pages(config.ring_buffer_size)}",
        f"-DFLUSH_BATCH={FLUSH_BATCH}",
        f"-DHOT_SLOTS={HOT_SLOTS}",
        f"-DCT_TOTALS={1 if config.enable_conntrack_metrics else 0}",
        f"-DCLOSE_REPORTS={2 if adaptive_close_reports(config, only_sums, on_demand) else 1}",
        *report_cflags(),
    ]


class PacketParserReceiver:
    """Implements :class:`~retina_otel.component.Lifecycle` and :class:`~.filtermap.IpFilter`."""

    def __init__(
        self, settings: CreateSettings, config: PacketParserConfig, next_consumer: FlowConsumer | None
    ) -> None:
        self.settings = settings
        self.config = config
        self._next = next_consumer
        self._host: Host | None = None
        self._bpf: Any = None
        self._fds: dict[str, int] = {}
        self._entry: dict[str, int] = {}  # observation point -> the program attached there
        # The entry programs on pod veths and the host interface, kept current as links come and go. TCX or
        # clsact; in TCX mode the attacher also removes clsact filters an older agent left behind. An
        # interface that refuses a program is logged and skipped, not fatal.
        self._hooks = DirectChain(
            FILTER_SPEC,
            config.interfaces,
            config.host_interface,
            attach_mode=config.attach_mode,
            rescan_interval=config.rescan_interval,
            name="packetparser-links",
            strict=False,
        )
        self._ring: RingBufReader | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake: Wakeup | None = None  # shutdown interrupts the reader's poll
        self._lock = threading.RLock()  # serialises ring reads, kernel flushes and emits
        # Rows of the next batch, filled straight from the ring buffer (records.complete_rows); handed on
        # at emit. np.empty: pages are only touched as rows arrive.
        self._pending = np.empty(config.max_batch_size, dtype=FLOW_DTYPE)
        self._pending_rows = 0
        self._clock_offset_ns = 0  # table clock -> unix epoch ns
        self._table_minus_mono_ns = 0  # table clock - CLOCK_MONOTONIC
        self._possible_cpus = 0
        self._hot: DoubleBuffer | None = None  # high aggregation: the flow cache's two arrays
        self._close_guard: CloseReportGuard | None = None  # report_on_close auto: the FIN/RST records' switch
        self._link_overruns = 0
        self._loop_errors = RepeatedError(log, "packetparser: reader loop error")
        self._consumer_errors = RepeatedError(log, "packetparser: next consumer failed")
        self._last_stats = np.zeros(len(STAT_NAMES), dtype=np.uint64)
        self._filter_ips: set[str] = set()
        self._ct_metrics: ConntrackMetrics | None = None
        self._parsed: Family | None = None
        self._dns_chain = PendingChain()  # offered as the "dns_chain" extension
        self._started = False
        self._shut = False
        self._mode: ReportMode = "events"
        self._events_now = False  # report_events[0] as last written ("switched" mode)
        self._unsubscribe: Callable[[], None] | None = None  # from the event demand ("switched" mode)
        self.rows_emitted = 0
        self.rule_switches = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        if self._started:
            return
        self._started = True
        self._host = host
        try:
            self._start(host)
        except Exception:
            self._teardown(final_flush=False)
            raise

    def _start(self, host: Host) -> None:
        from bcc import BPF

        demand = self.settings.event_demand
        self._mode = report_mode(self.config, self.settings.only_sums, demand is not None)
        self._bpf = load_bpf(BPF_SOURCE, build_cflags(self.config, self.settings.only_sums, demand is not None))
        ct_table = self._bpf["conntrack"]
        if (
            ctypes.sizeof(ct_table.Key) != CT_KEY_DTYPE.itemsize
            or ctypes.sizeof(ct_table.Leaf) != CT_ENTRY_DTYPE.itemsize
        ):
            raise RuntimeError("packetparser: kernel struct layout does not match records.py")
        programs = ["pp_from_endpoint", "pp_to_endpoint", "pp_from_network", "pp_to_network", "pp_flush", "pp_clock"]
        if self.config.aggregation == "high":
            if ctypes.sizeof(self._bpf["hot0"].sLeaf) != HOT_SLOT_DTYPE.itemsize:
                raise RuntimeError("packetparser: kernel flow-cache layout does not match records.py")
            self._hot = DoubleBuffer(self._bpf, "hot")
            programs.append("pp_merge")
            from bcc.utils import get_possible_cpus

            self._possible_cpus = len(get_possible_cpus())  # per-CPU map values hold one slot per possible CPU
            if adaptive_close_reports(self.config, self.settings.only_sums, demand is not None):
                self._close_guard = CloseReportGuard(
                    self._bpf, self.config.conntrack_max_entries, self._possible_cpus, self.config.report_interval
                )
        for name in programs:
            self._fds[name] = int(self._bpf.load_func(name, BPF.SCHED_CLS).fd)
        self._entry = {point: self._fds[f"pp_{point}"] for point in _POINTS}
        if uses_fast_path(self.config):
            full = self._bpf["pp_full"]
            for i, point in enumerate(_POINTS):  # index = observation point - 1, as in the program
                full[ctypes.c_int(i)] = ctypes.c_int(self._fds[f"pp_{point}"])
                name = f"pp_fast_{point}"
                self._fds[name] = self._entry[point] = int(self._bpf.load_func(name, BPF.SCHED_CLS).fd)
        self._sample_clock()
        self._ring = RingBufReader(self._bpf["events"].map_fd, self.config.ring_buffer_size, RINGBUF_RECORD_DTYPE)
        if self._filter_ips:
            self._apply_filter(sorted(self._filter_ips), add=True)
        self._parsed = host.metrics.counter(PARSED_PACKETS, "Number of packets parsed by the packetparser plugin")
        self._parsed.add((), 0.0)  # the series exists from the start, at 0
        if self.config.enable_conntrack_metrics:
            self._ct_metrics = ConntrackMetrics(host.metrics)
        self._dns_chain.bind(self._write_dns_slot)  # plugged programs are in pp_dns before any attachment
        self._hooks.plug(self._entry)
        self._wake = Wakeup()
        self._reader = threading.Thread(target=self._run, name="packetparser-reader", daemon=True)
        self._reader.start()
        if self._mode == "switched" and demand is not None:
            self._unsubscribe = demand.subscribe(self._switch_rule)  # switched now if a client follows
        self._report_status()

    def _report_status(self) -> None:
        if self._host is None:
            return
        attached = len(self._hooks.attached_interfaces())
        rule: str = self._mode
        if self._mode == "switched":
            rule = "events (a client follows live flows)" if self._events_now else "close (events while followed)"
        detail = f"attached to {attached} interfaces, report rule {rule}"
        self._host.report_status(self.settings.id, ComponentStatus.OK, detail)

    def _switch_rule(self, events: bool) -> None:
        """Report by Retina's rule (``events``) or on close from now on (``report_mode`` switched): write
        the kernel's flag, then sweep the flow cache, so no slot keeps the flags the old rule allowed it
        and the first records of the new rule are complete. Counts are exact under either rule."""
        with self._lock:
            if self._bpf is None or events == self._events_now:
                return
            self._bpf["report_events"][ctypes.c_int(0)] = ctypes.c_uint32(1 if events else 0)
            self._events_now = events
            if self._hot is not None:
                self._sweep_flow_cache()
            self.rule_switches += 1
        log.info("packetparser: report rule %s", "events (a client follows live flows)" if events else "close")
        self._report_status()

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        if not self._started:
            return
        self._teardown(final_flush=True)

    def _teardown(self, final_flush: bool) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._dns_chain.unbind()  # programs still plugged stay in pp_dns until it goes with the BPF object
        self._stop.set()
        if self._wake is not None:
            self._wake.wake()
        if self._reader is not None:
            self._reader.join(timeout=10)
            self._reader = None
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        self._hooks.unplug()
        if final_flush and self._bpf is not None and self._ring is not None:
            try:
                self.flush()
                self._publish_stats()
            except Exception:
                log.exception("packetparser: final flush failed")
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None

    # -- interfaces -----------------------------------------------------------------------------
    def attached_interfaces(self) -> dict[int, str]:
        return self._hooks.attached_interfaces()

    def entry_program_fd(self, point: str) -> int:
        """fd of the program attached at an observation point ("from_endpoint", ... "to_network")."""
        return self._entry[point]

    # -- filter map (IpFilter) ------------------------------------------------------------------
    def extensions(self) -> dict[ExtensionKey[Any] | str, object]:
        """The kernel's IP filter map, for k8sattributes to keep in sync (``ip_filter``), and the DNS chain
        (``dns_chain``, a :class:`~retina_otel.bpf.chain.ProgramChain`) for the dns receiver's TC source."""
        return {IP_FILTER: self, DNS_CHAIN: self._dns_chain}

    def _write_dns_slot(self, index: int, fd: int | None) -> None:
        """One slot of pp_dns (index = observation point - 1): a program fd, or None to empty it."""
        if self._bpf is None:
            return
        table = self._bpf["pp_dns"]
        if fd is None:
            with contextlib.suppress(KeyError):
                del table[ctypes.c_int(index)]
        else:
            table[ctypes.c_int(index)] = ctypes.c_int(fd)

    def add_ips(self, ips: list[str]) -> None:
        self._filter_ips.update(ips)
        if self._bpf is not None:
            self._apply_filter(ips, add=True)

    def remove_ips(self, ips: list[str]) -> None:
        self._filter_ips.difference_update(ips)
        if self._bpf is not None:
            self._apply_filter(ips, add=False)

    def _apply_filter(self, ips: list[str], add: bool) -> None:
        table = self._bpf["ipfilter"]
        for raw in lpm_keys(ips):
            key = table.Key.from_buffer_copy(raw)
            if add:
                table[key] = table.Leaf(1)
            else:
                with contextlib.suppress(KeyError):
                    del table[key]

    # -- data path ------------------------------------------------------------------------------
    def _run(self) -> None:
        """Drain the ring when reports arrive, flush the connection table every report interval, emit a
        batch at most ``batch_interval`` after its first row, publish statistics every second."""
        assert self._bpf is not None and self._wake is not None
        poller = select.poll()
        poller.register(self._bpf["events"].map_fd, select.POLLIN)
        poller.register(self._wake.fileno(), select.POLLIN)
        now = time.monotonic()
        next_flush, next_stats = now + self.config.report_interval, now + _STATS_SECONDS
        next_emit: float | None = None  # due once rows are pending
        while not self._stop.is_set():
            try:
                due = min(next_flush, next_stats, next_emit if next_emit is not None else next_stats)
                arrived = bool(poller.poll(max(0.0, due - time.monotonic()) * 1000))
                if self._stop.is_set():
                    return
                with self._lock:
                    self._drain_ring()
                    now = time.monotonic()
                    if now >= next_flush:
                        next_flush = now + self.config.report_interval
                        self._kernel_flush()
                    if self._pending_rows == 0:
                        next_emit = None
                    elif next_emit is None:
                        next_emit = now + self.config.batch_interval
                    elif now >= next_emit:
                        next_emit = None
                        self._emit()
                if now >= next_stats:
                    next_stats = now + _STATS_SECONDS
                    self._publish_stats()
                if arrived:  # let reports gather: one read per _POLL_SECONDS at most while they keep coming
                    self._stop.wait(_POLL_SECONDS)
            except Exception:
                self._loop_errors.exception()
                self._stop.wait(_POLL_SECONDS)

    def _drain_ring(self) -> int:
        """Move every committed report into the pending rows (emitting whenever they are full); returns
        how many reports were consumed."""
        assert self._ring is not None
        total = 0
        while True:
            fill = self._pending_rows
            consumed, written = self._ring.read_into(report_bytes(self._pending[fill:]))
            if consumed == 0:
                return total
            total += consumed
            self._pending_rows += complete_rows(self._pending[fill : fill + written], self._clock_offset_ns)
            if self._pending_rows >= self._pending.shape[0]:
                self._emit()

    def _emit(self) -> None:
        n = self._pending_rows
        if n == 0:
            return
        if n * _HANDOFF_FRACTION >= self._pending.shape[0]:
            records = self._pending[:n]
            self._pending = np.empty_like(self._pending)
        else:  # a small batch does not pin the whole buffer (an exporter's queue may hold many batches)
            records = copy_rows(self._pending[:n])
        self._pending_rows = 0
        batch = FlowBatch(records=records, receiver=self.settings.id)
        if self._host is not None:
            batch.attributes["k8s.node.name"] = self._host.node_name
        if self._ct_metrics is not None:
            self._ct_metrics.count_records(records)
        self.rows_emitted += len(batch)
        if self._next is not None:
            try:
                self._next.consume_flows(batch)
            except Exception:
                self._consumer_errors.exception()

    def _run_batched(self, program: str, input_map: str, rows: npt.NDArray[np.void]) -> None:
        """Run a user-space-driven program (pp_flush, pp_merge) over ``rows``: FLUSH_BATCH at a time
        written into its input array, the count in the first 4 bytes of the test-run packet; the ring
        buffer is drained after each run, so a long flush cannot fill it."""
        assert self._bpf is not None
        fd = self._bpf[input_map].map_fd
        for start in range(0, int(rows.shape[0]), FLUSH_BATCH):
            chunk = np.ascontiguousarray(rows[start : start + FLUSH_BATCH])
            n = int(chunk.shape[0])
            update_batch(fd, np.arange(n, dtype=np.uint32), chunk)
            prog_test_run(self._fds[program], struct.pack("<I", n) + b"\x00" * 60)
            self._drain_ring()

    def _sample_clock(self) -> None:
        """Relate the table's clock (jiffies in ns, coarse or precise monotonic) to user-space clocks."""
        assert self._bpf is not None
        prog_test_run(self._fds["pp_clock"], b"\x00" * 64)
        sample = self._bpf["clock_sample"]
        table_ns = int(sample[ctypes.c_int(0)].value)
        mono_ns = int(sample[ctypes.c_int(1)].value)
        self._table_minus_mono_ns = table_ns - mono_ns
        self._clock_offset_ns = wall_offset_ns() - self._table_minus_mono_ns

    def _sweep_flow_cache(self) -> None:
        """Move the counts pending in high aggregation's per-CPU flow cache into the connection table.

        Switch the programs to the other of the cache's two arrays (when the switch returns, no program
        counts into the old one any more), read the old one on every CPU, let pp_merge add the pending
        counts to their entries, and zero it for its next turn.
        """
        assert self._bpf is not None and self._hot is not None
        ncpu = self._possible_cpus
        hot_fd = self._bpf[self._hot.swap()].map_fd
        _keys, values = lookup_batch(hot_fd, np.dtype(np.uint32), np.dtype((HOT_SLOT_DTYPE, (ncpu,))), HOT_SLOTS)
        slots = values.reshape(-1)
        if not slots["valid"].any():
            return
        self._run_batched("pp_merge", "merge_list", slots[(slots["valid"] != 0) & (slots["packets"] > 0)])
        update_batch(hot_fd, np.arange(HOT_SLOTS, dtype=np.uint32), np.zeros((HOT_SLOTS, ncpu), dtype=HOT_SLOT_DTYPE))

    def _kernel_flush(self, everything: bool = False) -> None:
        """Move every unreported counter of the connection table into the ring buffer (and drop idle
        expired entries), via the pp_flush program run with BPF_PROG_TEST_RUN. The flow cache is swept
        first: the array the programs counted into (the other has counted for a few milliseconds), or both
        with ``everything``."""
        assert self._bpf is not None
        if "pp_merge" in self._fds:
            for _ in range(2 if everything else 1):
                self._sweep_flow_cache()
        self._sample_clock()
        now = time.monotonic_ns() + self._table_minus_mono_ns
        ct = self._ct_metrics
        if ct is not None:
            ct.begin()
        wanted: list[npt.NDArray[np.void]] = []  # keys only: the entries are read a chunk at a time
        created = self._stat(_ST_CREATED)  # before reading: entries created during the read count as later
        entries = 0
        for keys, values in iter_batches(self._bpf["conntrack"].map_fd, CT_KEY_DTYPE, CT_ENTRY_DTYPE, _READ_CHUNK):
            entries += int(keys.shape[0])
            expired = values["eviction_ns"] < now
            if ct is not None:
                ct.add_entries(keys[~expired], values[~expired])
            need = (values["d"]["packets"] > 0).any(axis=1) | expired
            wanted.append(keys[need])  # boolean indexing copies
        if ct is not None:
            ct.publish()
        if wanted:
            self._run_batched("pp_flush", "flush_keys", np.concatenate(wanted))
        if self._close_guard is not None:
            self._close_guard.flushed(entries, created)

    def flush(self) -> None:
        """Report every counter still in the kernel, hand all pending rows to the next consumer and
        publish the kernel statistics."""
        if self._bpf is None or self._ring is None:
            return
        with self._lock:
            self._drain_ring()
            self._kernel_flush(everything=True)
            self._drain_ring()
            self._emit()
            self._publish_stats()

    # -- statistics -----------------------------------------------------------------------------
    def kernel_stats(self) -> dict[str, int]:
        """Cumulative per-CPU statistics of the programs, summed (names in records.STAT_NAMES)."""
        if self._bpf is None:
            return {}
        return {name: self._stat(i) for i, name in enumerate(STAT_NAMES)}

    def _stat(self, index: int) -> int:
        return int(sum(self._bpf["stats"][ctypes.c_int(index)]))

    @property
    def reports_on_close(self) -> bool:
        """Whether the close rule writes its record on FIN/RST now (``report_on_close``; always true
        unless ``auto`` judged the connection table safe)."""
        with self._lock:
            return self._close_guard is None or self._bpf is None or self._close_guard.on

    @property
    def close_report_switches(self) -> int:
        """How often ``report_on_close: auto`` turned the records on or off."""
        return 0 if self._close_guard is None else self._close_guard.switches

    def _publish_stats(self) -> None:
        with self._lock:  # the reader thread and flush() both publish; each delta goes out once
            if self._host is None or self._bpf is None:
                return
            stats = self.kernel_stats()
            current = np.array([stats[n] for n in STAT_NAMES], dtype=np.uint64)
            delta = current - self._last_stats
            self._last_stats = current
            if self._close_guard is not None:
                self._close_guard.tick(stats["conntrack_created"])
            overruns = self._hooks.link_overruns  # the link watcher's (restarts at 0 with a new watcher)
            lost_link_messages = max(0, overruns - self._link_overruns)
            self._link_overruns = overruns
        if self._parsed is not None and delta[_ST_PACKETS]:
            self._parsed.add((), float(delta[_ST_PACKETS]))
        for i, name in enumerate(STAT_NAMES):
            if name in LOST_STATS and delta[i]:
                self._host.count_lost("packetparser", name, int(delta[i]))
        if lost_link_messages:  # netlink dropped link messages; the interfaces were rescanned at once
            self._host.count_lost("packetparser", "netlink_link_messages", lost_link_messages)
