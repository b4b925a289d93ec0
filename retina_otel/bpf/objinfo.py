"""What the kernel says about this process's own BPF programs and maps (for the agent's self-metrics).

* :func:`own_fds`: the program and map file descriptors this process holds (``/proc/self/fd`` links
  ``anon_inode:bpf-prog`` / ``anon_inode:bpf-map``), whoever loaded them (bcc or raw ``bpf(2)``);
* :func:`prog_info` / :func:`map_info`: ``BPF_OBJ_GET_INFO_BY_FD``. A program's ``run_time_ns`` and
  ``run_cnt`` grow only while ``kernel.bpf_stats_enabled`` is 1 (:func:`stats_enabled`; this module
  never changes it: the accounting costs every program run a little);
* :func:`count_entries`: live entries of a hash-type map, read with ``BPF_MAP_LOOKUP_BATCH`` a chunk at
  a time into reused buffers (:func:`retina_otel.bpf.mapbatch.iter_batches`; an LPM trie, which has no
  batch operations, with ``BPF_MAP_GET_NEXT_KEY``);
* :func:`ringbuf_used`: bytes written and not yet consumed in a ring buffer, from its consumer and
  producer position pages (``mmap`` read-only).

Struct layouts are the UAPI's (``include/uapi/linux/bpf.h``), which only ever grows at the end; the
kernel copies ``min(info_len, its size)``, so the prefix used here is enough. ``tests/test_bpf_selfstats.py``
checks the offsets against the running kernel's BTF.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retina_otel.bpf.syscall import bpf

__all__ = [
    "HASH_TYPES",
    "MAP_TYPES",
    "PROG_TYPES",
    "RINGBUF",
    "MapInfo",
    "ProgInfo",
    "count_entries",
    "map_info",
    "own_fds",
    "prog_info",
    "ringbuf_used",
    "stats_enabled",
]

_BPF_MAP_GET_NEXT_KEY = 4
_BPF_OBJ_GET_INFO_BY_FD = 15

MAP_TYPES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash", 6: "percpu_array",
    9: "lru_hash", 10: "lru_percpu_hash", 11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps",
    27: "ringbuf",
}  # fmt: skip
PROG_TYPES = {
    1: "socket_filter", 3: "sched_cls", 4: "sched_act", 5: "tracepoint", 6: "xdp", 7: "perf_event",
    17: "raw_tracepoint", 26: "tracing",
}  # fmt: skip
HASH_TYPES = frozenset({1, 5, 9, 10, 11})  # bounded by max_entries and counted by :func:`count_entries`
PERCPU_TYPES = frozenset({5, 10})
RINGBUF = 27


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class _ProgInfo(ct.Structure):
    """struct bpf_prog_info up to run_cnt."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
        ("ifindex", ct.c_uint32),
        ("gpl_compatible", ct.c_uint32),
        ("netns_dev", ct.c_uint64),
        ("netns_ino", ct.c_uint64),
        ("nr_jited_ksyms", ct.c_uint32),
        ("nr_jited_func_lens", ct.c_uint32),
        ("jited_ksyms", ct.c_uint64),
        ("jited_func_lens", ct.c_uint64),
        ("btf_id", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32),
        ("func_info", ct.c_uint64),
        ("nr_func_info", ct.c_uint32),
        ("nr_line_info", ct.c_uint32),
        ("line_info", ct.c_uint64),
        ("jited_line_info", ct.c_uint64),
        ("nr_jited_line_info", ct.c_uint32),
        ("line_info_rec_size", ct.c_uint32),
        ("jited_line_info_rec_size", ct.c_uint32),
        ("nr_prog_tags", ct.c_uint32),
        ("prog_tags", ct.c_uint64),
        ("run_time_ns", ct.c_uint64),
        ("run_cnt", ct.c_uint64),
    ]


class _MapInfo(ct.Structure):
    """struct bpf_map_info up to name."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class _ElemAttr(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32), ("pad", ct.c_uint32), ("key", ct.c_uint64), ("next_key", ct.c_uint64),
                ("flags", ct.c_uint64)]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProgInfo:
    id: int
    type: int
    name: str
    run_time_ns: int
    run_cnt: int


@dataclass(frozen=True, slots=True)
class MapInfo:
    id: int
    type: int
    name: str
    key_size: int
    value_size: int
    max_entries: int


def _info(fd: int, info: ct.Structure, what: str) -> None:
    attr = _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info))
    bpf(_BPF_OBJ_GET_INFO_BY_FD, attr, what)


def prog_info(fd: int) -> ProgInfo:
    info = _ProgInfo()
    _info(fd, info, "BPF_OBJ_GET_INFO_BY_FD (program)")
    return ProgInfo(info.id, info.type, info.name.decode(errors="replace"), info.run_time_ns, info.run_cnt)


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _info(fd, info, "BPF_OBJ_GET_INFO_BY_FD (map)")
    return MapInfo(
        info.id, info.type, info.name.decode(errors="replace"), info.key_size, info.value_size, info.max_entries
    )


def own_fds(proc_fd: Path = Path("/proc/self/fd")) -> tuple[list[int], list[int]]:
    """(program fds, map fds) this process holds now."""
    progs: list[int] = []
    maps: list[int] = []
    for entry in os.scandir(proc_fd):
        try:
            target = os.readlink(entry.path)
        except OSError:  # closed meanwhile
            continue
        if target == "anon_inode:bpf-prog":
            progs.append(int(entry.name))
        elif target == "anon_inode:bpf-map":
            maps.append(int(entry.name))
    return progs, maps


def stats_enabled(path: Path = Path("/proc/sys/kernel/bpf_stats_enabled")) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


_POSSIBLE_CPUS: int | None = None


def _possible_cpus() -> int:
    global _POSSIBLE_CPUS
    if _POSSIBLE_CPUS is None:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        count = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
        _POSSIBLE_CPUS = count
    return _POSSIBLE_CPUS


def count_entries(fd: int, info: MapInfo, chunk: int = 4096, limit: int = 1 << 22) -> int:
    """Live entries of a hash-type map (``info.type`` in :data:`HASH_TYPES`); at most ``limit`` counted
    (a chunk more at the most)."""
    if info.type == 11:
        return _count_by_next_key(fd, info, limit)
    from retina_otel.bpf.mapbatch import iter_batches

    value_size = info.value_size
    if info.type in PERCPU_TYPES:
        value_size = (value_size + 7) // 8 * 8 * _possible_cpus()
    key_dtype, value_dtype = np.dtype((np.void, info.key_size)), np.dtype((np.void, value_size))
    total = 0
    for keys, _values in iter_batches(fd, key_dtype, value_dtype, max(1, min(chunk, info.max_entries))):
        total += int(keys.shape[0])
        if total >= limit:
            break
    return total


def _count_by_next_key(fd: int, info: MapInfo, limit: int) -> int:
    key = ct.create_string_buffer(info.key_size)
    next_key = ct.create_string_buffer(info.key_size)
    count = 0
    attr = _ElemAttr(map_fd=fd, key=0, next_key=ct.addressof(next_key))  # NULL key: the first one
    while count < limit:
        try:
            bpf(_BPF_MAP_GET_NEXT_KEY, attr, "BPF_MAP_GET_NEXT_KEY")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return count
            raise
        count += 1
        ct.memmove(key, next_key, info.key_size)
        attr.key = ct.addressof(key)
    return count


def ringbuf_used(fd: int) -> int:
    """Bytes a ring buffer holds that its reader has not consumed (producer - consumer position)."""
    page = mmap.PAGESIZE
    positions = []
    for offset in (0, page):  # the consumer page, then the producer page
        with contextlib.closing(mmap.mmap(fd, page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=offset)) as m:
            positions.append(int.from_bytes(m[:8], sys.byteorder))
    consumer, producer = positions
    return max(0, producer - consumer)
