"""The agent's own eBPF cost and map fullness, as ``controlplane_networkobservability_bpf_*`` metrics.

Read at collection time (every scrape and OTLP export, at most once per ``min_interval``) from the BPF
objects this process holds (:mod:`retina_otel.bpf.objinfo`), named after the bcc program or table and
the source file that declared it (:func:`retina_otel.bpf.loaded_objects`; objects loaded otherwise keep
the kernel's 15-character name and an empty ``component``):

* per program, when ``kernel.bpf_stats_enabled`` is 1: cumulative run time and run count (the kernel
  accounts them only while statistics are on: the sysctl, or a tool holding a ``BPF_ENABLE_STATS`` fd
  such as ``bpftool prog profile``; programs with runs accounted are published also after they went off.
  The agent never turns statistics on);
* per bounded map (hash, LRU hash, per-CPU hash, LPM trie): live entries, capacity and their ratio;
  entries are counted by reading the map in chunks of 4,096 (``BPF_MAP_LOOKUP_BATCH``; measured ~0.7 us
  per live entry, 100,000 entries in 70 ms), at most once per ``count_interval`` (30 s) per map, so a
  full 262,144-entry connection table costs ~0.6% of a core;
* per ring buffer: bytes written and not yet consumed, capacity and their ratio.

With these next to ``lost_events_counter`` a loss has its cause in view: ``ringbuf_full`` with a ring
at 1.0, ``conntrack_full`` with the connection table at its capacity.
"""

from __future__ import annotations

import ctypes as ct
import logging
import threading
import time
from typing import Any

from retina_otel.metrics.store import MetricStore

__all__ = ["BpfSelfMetrics"]

log = logging.getLogger(__name__)


class BpfSelfMetrics:
    def __init__(self, store: MetricStore, *, min_interval: float = 1.0, count_interval: float = 30.0) -> None:
        self._min_interval = min_interval
        self._count_interval = count_interval
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._counted: dict[int, tuple[float, int]] = {}  # map id -> (when, entries)
        self._names: dict[int, tuple[int, dict[int, tuple[str, str]], dict[int, tuple[str, str]]]] = {}
        self._seen_programs: set[str] = set()
        self._seen_maps: set[str] = set()
        self._enabled = store.gauge(
            "controlplane_networkobservability_bpf_stats_enabled",
            "1 when kernel.bpf_stats_enabled is on (program run time and count are accounted), else 0",
        )
        program = ("component", "program")
        self._run_seconds = store.counter(
            "controlplane_networkobservability_bpf_program_run_seconds",
            "Time the agent's eBPF programs ran in the kernel (while kernel.bpf_stats_enabled is 1)",
            program,
            unit="s",
        )
        self._runs = store.counter(
            "controlplane_networkobservability_bpf_program_runs",
            "Runs of the agent's eBPF programs (while kernel.bpf_stats_enabled is 1)",
            program,
        )
        bounded = ("component", "map", "type")
        self._entries = store.gauge(
            "controlplane_networkobservability_bpf_map_entries",
            "Live entries of the agent's bounded eBPF maps (ring buffers: bytes not yet read)",
            bounded,
        )
        self._capacity = store.gauge(
            "controlplane_networkobservability_bpf_map_capacity",
            "max_entries of the agent's bounded eBPF maps (ring buffers: size in bytes)",
            bounded,
        )
        self._fullness = store.gauge(
            "controlplane_networkobservability_bpf_map_fullness_ratio",
            "entries / capacity of the agent's bounded eBPF maps (1: full, new entries fail)",
            bounded,
        )

    def refresh(self) -> None:
        """Read the kernel now (rate-limited to ``min_interval``); a failure is logged, never raised."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._min_interval:
                return
            self._last = now
            try:
                self._refresh(now)
            except Exception:
                log.exception("reading the agent's eBPF statistics failed")

    # -- names --------------------------------------------------------------------------------------

    def _bcc_names(self) -> tuple[dict[int, tuple[str, str]], dict[int, tuple[str, str]]]:
        """prog id -> (component, function name) and map id -> (component, table name), from bcc."""
        from retina_otel.bpf import loaded_objects

        progs: dict[int, tuple[str, str]] = {}
        maps: dict[int, tuple[str, str]] = {}
        alive: set[int] = set()
        for obj, component in loaded_objects():
            key = id(obj)
            alive.add(key)
            funcs = getattr(obj, "funcs", {})
            cached = self._names.get(key)
            if cached is None or cached[0] != len(funcs):
                cached = (len(funcs), *_names_of(obj, component))
                self._names[key] = cached
            progs.update(cached[1])
            maps.update(cached[2])
        for key in set(self._names) - alive:
            del self._names[key]
        return progs, maps

    # -- reading ------------------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        from retina_otel.bpf import objinfo

        prog_fds, map_fds = objinfo.own_fds()
        if not prog_fds and not map_fds and not self._seen_programs and not self._seen_maps:
            return  # an agent without eBPF receivers: nothing to publish or remove
        prog_names, map_names = self._bcc_names()
        enabled = objinfo.stats_enabled()
        self._enabled.set((), 1.0 if enabled else 0.0)
        self._programs(prog_fds, prog_names, enabled)
        self._maps(map_fds, map_names, now)

    def _programs(self, fds: list[int], names: dict[int, tuple[str, str]], enabled: bool) -> None:
        """Programs the kernel has accounted: all while the sysctl is on, else those with runs counted
        (statistics switched on for a while, by the sysctl or by a tool holding a BPF_ENABLE_STATS fd)."""
        from retina_otel.bpf import objinfo

        totals: dict[tuple[str, str], list[int]] = {}
        seen: set[int] = set()
        for fd in fds:
            try:
                info = objinfo.prog_info(fd)
            except OSError:  # closed (and maybe reused) since the scan
                continue
            if info.id in seen or not (enabled or info.run_cnt):
                continue
            seen.add(info.id)
            label = names.get(info.id, ("", info.name))
            total = totals.setdefault(label, [0, 0])
            total[0] += info.run_time_ns
            total[1] += info.run_cnt
        self._run_seconds.set_many((label, t[0] / 1e9) for label, t in totals.items())
        self._runs.set_many((label, float(t[1])) for label, t in totals.items())
        present = {program for _, program in totals}
        gone = self._seen_programs - present
        if gone:
            self._run_seconds.remove_where("program", gone)
            self._runs.remove_where("program", gone)
        self._seen_programs = present

    def _maps(self, fds: list[int], names: dict[int, tuple[str, str]], now: float) -> None:
        from retina_otel.bpf import objinfo

        totals: dict[tuple[str, str, str], list[int]] = {}
        seen: set[int] = set()
        for fd in fds:
            try:
                info = objinfo.map_info(fd)
                if info.id in seen or not (info.type in objinfo.HASH_TYPES or info.type == objinfo.RINGBUF):
                    continue
                seen.add(info.id)
                if info.type == objinfo.RINGBUF:
                    entries = objinfo.ringbuf_used(fd)
                else:
                    counted = self._counted.get(info.id)
                    if counted is None or now - counted[0] >= self._count_interval:
                        counted = (now, objinfo.count_entries(fd, info))
                        self._counted[info.id] = counted
                    entries = counted[1]
            except OSError:
                continue
            component, name = names.get(info.id, ("", info.name))
            label = (component, name, objinfo.MAP_TYPES.get(info.type, str(info.type)))
            total = totals.setdefault(label, [0, 0])
            total[0] += entries
            total[1] += info.max_entries
        for stale in set(self._counted) - seen:
            del self._counted[stale]
        self._entries.set_many((label, float(t[0])) for label, t in totals.items())
        self._capacity.set_many((label, float(t[1])) for label, t in totals.items())
        self._fullness.set_many((label, t[0] / t[1] if t[1] else 0.0) for label, t in totals.items())
        present = {name for _, name, _ in totals}
        gone = self._seen_maps - present
        if gone:
            for family in (self._entries, self._capacity, self._fullness):
                family.remove_where("map", gone)
        self._seen_maps = present


def _names_of(obj: Any, component: str) -> tuple[dict[int, tuple[str, str]], dict[int, tuple[str, str]]]:
    """Kernel ids of one bcc object's loaded functions and tables, with their full names."""
    from retina_otel.bpf import objinfo

    progs: dict[int, tuple[str, str]] = {}
    for name, fn in list(getattr(obj, "funcs", {}).items()):
        try:
            progs[objinfo.prog_info(int(fn.fd)).id] = (component, _text(name))
        except (OSError, AttributeError, ValueError):
            continue
    maps: dict[int, tuple[str, str]] = {}
    module = getattr(obj, "module", None)
    if module is None:
        return progs, maps
    lib = _libbcc_tables()
    for i in range(int(lib.bpf_num_tables(module))):
        raw = lib.bpf_table_name(module, i)
        if not raw:
            continue
        fd = int(lib.bpf_table_fd(module, raw))
        if fd < 0:
            continue
        try:
            maps[objinfo.map_info(fd).id] = (component, raw.decode(errors="replace"))
        except OSError:
            continue
    return progs, maps


def _libbcc_tables() -> Any:
    """libbcc's table enumeration (in the C API; bcc's Python module does not declare it)."""
    from bcc.libbcc import lib

    lib.bpf_num_tables.restype = ct.c_size_t
    lib.bpf_num_tables.argtypes = [ct.c_void_p]
    lib.bpf_table_name.restype = ct.c_char_p
    lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_size_t]
    return lib


def _text(name: object) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
