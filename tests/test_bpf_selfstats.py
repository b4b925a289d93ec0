"""The agent's own eBPF cost and map fullness: struct layouts against the kernel's BTF, then a real
program run with BPF_PROG_TEST_RUN, counted maps and an unread ring buffer."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retina_otel.bpf import load_bpf, objinfo
from retina_otel.bpf.btf import kernel_btf
from retina_otel.bpf.syscall import bpf
from retina_otel.metrics.bpfstats import BpfSelfMetrics
from retina_otel.metrics.selfmetrics import SelfMetrics
from retina_otel.metrics.store import MetricStore
from retina_otel.receivers.packetparser.kernel import prog_test_run
from tests.support.requirements import unavailable

pytestmark = pytest.mark.kernel

PROGRAM = r"""
#include <uapi/linux/bpf.h>
BPF_TABLE("lru_hash", u32, u64, selfstats_flows, 1000);
BPF_RINGBUF_OUTPUT(selfstats_ring, 1);  // one page: 4096 bytes
BPF_ARRAY(selfstats_array, u64, 4);     // arrays are always "full": not reported
int selfstats_prog(struct __sk_buff *skb) {
    void *r = selfstats_ring.ringbuf_reserve(56);  // + 8 bytes of record header = 64 per run
    if (r)
        selfstats_ring.ringbuf_submit(r, 0);
    return 0;
}
"""

_BPF_ENABLE_STATS = 32


class _EnableStats(ct.Structure):
    _fields_ = [("type", ct.c_uint32)]  # BPF_STATS_RUN_TIME = 0


@contextlib.contextmanager
def run_time_stats() -> Iterator[None]:
    """Program statistics on while the fd is held (BPF_ENABLE_STATS): the sysctl is never written, and
    the kernel turns them off again when the fd closes, also if the test dies."""
    fd = bpf(_BPF_ENABLE_STATS, _EnableStats(0), "BPF_ENABLE_STATS")
    try:
        yield
    finally:
        os.close(fd)


def test_info_layouts_match_the_running_kernel() -> None:
    btf = kernel_btf()
    for struct, model in (("bpf_prog_info", objinfo._ProgInfo), ("bpf_map_info", objinfo._MapInfo)):
        for name, *_ in model._fields_:
            field = getattr(model, name)
            member = btf.member(struct, name)
            assert (member.offset, member.size) == (field.offset, field.size), f"{struct}.{name}"


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[Any]:
    source = tmp_path / "selfstats.bpf.c"
    source.write_text(PROGRAM)
    b = load_bpf(source)
    try:
        b.load_func("selfstats_prog", b.SCHED_CLS)
        yield b
    finally:
        b.cleanup()


def _values(store: MetricStore, name: str) -> dict[tuple[str, ...], float]:
    family = store.get(name)
    assert family is not None, name
    return {labels: value for labels, value, _ in family.snapshot().series}  # type: ignore[misc]


def test_program_cost_and_map_fullness(loaded: Any) -> None:
    store = MetricStore()
    stats = BpfSelfMetrics(store, min_interval=0, count_interval=0)
    table = loaded["selfstats_flows"]
    for i in range(250):
        table[table.Key(i)] = table.Leaf(i)
    fd = int(loaded.funcs[b"selfstats_prog"].fd)
    with run_time_stats():
        prog_test_run(fd, b"\x00" * 64, repeat=10)
        stats.refresh()
    label = ("selfstats", "selfstats_prog")  # the source file's name and the full function name
    # The sysctl does not show statistics switched on by an fd; runs accounted are published anyway.
    assert _values(store, "controlplane_networkobservability_bpf_stats_enabled")[()] == float(objinfo.stats_enabled())
    assert _values(store, "controlplane_networkobservability_bpf_program_runs")[label] == 10
    assert 0 < _values(store, "controlplane_networkobservability_bpf_program_run_seconds")[label] < 0.01

    entries = _values(store, "controlplane_networkobservability_bpf_map_entries")
    capacity = _values(store, "controlplane_networkobservability_bpf_map_capacity")
    fullness = _values(store, "controlplane_networkobservability_bpf_map_fullness_ratio")
    flows = ("selfstats", "selfstats_flows", "lru_hash")
    ring = ("selfstats", "selfstats_ring", "ringbuf")
    assert (entries[flows], capacity[flows], fullness[flows]) == (250, 1000, 0.25)
    assert (entries[ring], capacity[ring]) == (640, 4096)  # 10 unread records of 64 bytes
    assert not [k for k in entries if k[1] == "selfstats_array"]

    # The ring fills up: its fullness says why the program's records get lost (a record needs room for
    # itself below the full size, so 63 of 64 fit).
    prog_test_run(fd, b"\x00" * 64, repeat=100)
    stats.refresh()
    assert _values(store, "controlplane_networkobservability_bpf_map_fullness_ratio")[ring] == 63 * 64 / 4096


def test_without_kernel_statistics_no_program_series_and_the_sysctl_is_left_alone(loaded: Any) -> None:
    if objinfo.stats_enabled():
        unavailable("kernel.bpf_stats_enabled is on on this host (someone else's choice)")  # fails under CI
    store = MetricStore()
    SelfMetrics(store).install_process_metrics()  # how the agent installs it
    names = {snap.name for snap in store.collect()}
    assert "controlplane_networkobservability_bpf_map_entries" in names
    runs = store.get("controlplane_networkobservability_bpf_program_runs")
    assert runs is not None and len(runs) == 0
    assert _values(store, "controlplane_networkobservability_bpf_stats_enabled")[()] == 0.0
    assert not objinfo.stats_enabled()


def test_objects_vanish_with_their_series(tmp_path: Path) -> None:
    store = MetricStore()
    stats = BpfSelfMetrics(store, min_interval=0, count_interval=0)
    source = tmp_path / "selfstats.bpf.c"
    source.write_text(PROGRAM)
    b = load_bpf(source)
    stats.refresh()
    assert any(k[1] == "selfstats_flows" for k in _values(store, "controlplane_networkobservability_bpf_map_entries"))
    b.cleanup()
    del b
    stats.refresh()
    assert not any(
        k[1] == "selfstats_flows" for k in _values(store, "controlplane_networkobservability_bpf_map_entries")
    )
