"""DoubleBuffer: the switch waits for programs still writing the old map (a kernel guarantee, not a
timing), and a receiver drained continuously under load loses nothing against nft's own counters."""

from __future__ import annotations

import ctypes as ct
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from retina_otel.bpf.doublebuffer import DoubleBuffer
from retina_otel.component import CreateSettings
from retina_otel.flows import STRINGS, ip_to_bytes
from retina_otel.receivers.dropreason import FACTORY, DropReasonConfig, DropReasonReceiver
from retina_otel.receivers.packetparser.kernel import prog_test_run
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost

pytestmark = pytest.mark.kernel

# A TC program run with BPF_PROG_TEST_RUN that reads the switch, says so, then works ~0.1 s (copying
# 1 MiB SPIN times: no helper or loop the verifier would refuse) before it writes the map it read.
_SLOW_WRITER = r"""
struct blob { u8 b[1 << 20]; };
BPF_HASH(m0, u32, u64, 16);
BPF_HASH(m1, u32, u64, 16);
BPF_ARRAY_OF_MAPS(m_active, "m0", 1);
BPF_ARRAY(started, u64, 1);
BPF_ARRAY(scratch, struct blob, 2);

int slow_writer(struct __sk_buff *skb) {
    u32 zero = 0, one = 1, k = 1;
    void *m = m_active.lookup(&zero);
    u64 *s = started.lookup(&zero);
    struct blob *a = scratch.lookup(&zero);
    struct blob *b = scratch.lookup(&one);
    if (!m || !s || !a || !b)
        return 0;
    __sync_fetch_and_add(s, 1);  // after the read of the switch
    for (u32 i = 0; i < SPIN; i++)
        bpf_probe_read_kernel(a, sizeof(*a), b);
    u64 init = 1;
    u64 *v = bpf_map_lookup_elem(m, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    else
        bpf_map_update_elem(m, &k, &init, BPF_NOEXIST);
    return 0;
}
"""


@pytest.fixture(scope="module")
def slow_writer() -> Iterator[tuple[Any, int]]:
    from bcc import BPF

    bpf = BPF(text=_SLOW_WRITER, cflags=["-DSPIN=1500"])
    try:
        yield bpf, int(bpf.load_func("slow_writer", BPF.SCHED_CLS).fd)
    finally:
        bpf.cleanup()


def _count(bpf: Any, name: str) -> int:
    table = bpf[name]
    return sum(int(v.value) for v in table.values())


def test_swap_returns_only_after_a_running_program_is_done(slow_writer: tuple[Any, int]) -> None:
    """A program that read the switch before the swap and writes ~0.1 s later: when swap() returns,
    its write is in the map swap() hands back (a 2 ms settle time would have read it empty)."""
    bpf, fd = slow_writer
    for name in ("m0", "m1", "started"):
        bpf[name].clear()
    switch = DoubleBuffer(bpf, "m")
    assert switch.active == "m0"
    started = bpf["started"]
    t0 = time.monotonic()
    run = threading.Thread(target=prog_test_run, args=(fd, b"\x00" * 64))  # ctypes releases the GIL
    run.start()
    try:
        while int(started[ct.c_int(0)].value) == 0:
            assert time.monotonic() - t0 < 10, "the program never started"
            time.sleep(0.0005)
        swap_start = time.monotonic()
        idle = switch.swap()
        waited = time.monotonic() - swap_start
        assert idle == "m0" and switch.active == "m1"
        assert _count(bpf, "m0") == 1, f"swap returned after {waited * 1e3:.1f} ms with the write missing"
        assert _count(bpf, "m1") == 0
    finally:
        run.join(timeout=30)
    run_time = time.monotonic() - t0
    assert waited > 0.01, f"the program ran {run_time * 1e3:.0f} ms; swap waited only {waited * 1e3:.1f} ms"
    # Programs that start after the swap write the other map.
    prog_test_run(fd, b"\x00" * 64)
    assert _count(bpf, "m1") == 1 and _count(bpf, "m0") == 1
    assert switch.swap() == "m1" and switch.active == "m0"


# -- stress: a receiver drained continuously while both CPUs drop packets --------------------------

EVENTS = 10_000_000
PAYLOAD = 64  # iperf3 -l: UDP length 72; iperf3's 4-byte UDP hello (length 12) is not dropped
PORTS = (7301, 7302)


def _nft_counters(pod: Pod) -> dict[str, int]:
    out = pod.run(["nft", "-j", "list", "counters", "table", "inet", "rotel_stress"]).stdout
    return {
        item["counter"]["name"]: int(item["counter"]["packets"])
        for item in json.loads(out)["nftables"]
        if "counter" in item
    }


def _pinned(cpu: int, args: list[str]) -> list[str]:
    cpus = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", str(cpus[cpu % len(cpus)]), *args]


def test_stress_continuous_drains_lose_nothing(sandbox: Sandbox) -> None:
    """>= 10M NETFILTER_DROP events from two iperf3 UDP streams pinned to different CPUs, the receiver
    draining (and so switching maps) every 20 ms all along: the flow records add up to nft's counters
    exactly, and nothing was counted lost."""
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    rules = "\n".join(
        f"counter c{p} {{}}\n chain input{p} {{ type filter hook input priority 0; "
        f"udp dport {p} udp length {PAYLOAD + 8} counter name c{p} drop; }}"
        for p in PORTS
    )
    subprocess.run(b.exec_args(["nft", "-f", "-"]), input=f"table inet rotel_stress {{\n{rules}\n}}\n",
                   text=True, check=True)  # fmt: skip
    servers = [b.popen(["iperf3", "-s", "-1", "-B", b.ipv4, "-p", str(p)], stdout=subprocess.DEVNULL) for p in PORTS]
    host, consumer = TestHost(), CollectingConsumer()
    rcv = FACTORY.create(CreateSettings("dropreason", "receiver"), DropReasonConfig(interval=0.02), consumer)
    assert isinstance(rcv, DropReasonReceiver)
    per_client = EVENTS // len(PORTS) + 1
    iperf = ["iperf3", "-c", b.ipv4, "-u", "-b", "0", "-l", str(PAYLOAD), "-n", str(per_client * PAYLOAD)]
    try:
        rcv.start(host)
        time.sleep(0.5)  # the iperf3 servers listen
        t0 = time.monotonic()
        clients = [a.popen(_pinned(i, [*iperf, "-p", str(p)]), stdout=subprocess.DEVNULL) for i, p in enumerate(PORTS)]
        for c in clients:
            assert c.wait(timeout=120) == 0
        elapsed = time.monotonic() - t0
        drains = len(consumer.batches)
    finally:
        rcv.shutdown()  # the final drain
        for s in servers:
            s.kill()
    counted = _nft_counters(b)
    rows = consumer.records()
    ours = rows[(rows["dst_ip"] == np.void(ip_to_bytes(b.ipv4))) & np.isin(rows["dst_port"], PORTS)]
    assert {STRINGS.name(int(x)) for x in ours["drop_reason"]} == {"NETFILTER_DROP"}
    for p in PORTS:
        assert int(ours["packets"][ours["dst_port"] == p].sum()) == counted[f"c{p}"], p
    total = sum(counted.values())
    assert total >= EVENTS
    lost = host.metrics.get("controlplane_networkobservability_lost_events_counter")
    assert lost is not None and len(lost) == 0, lost.snapshot() if lost is not None else None
    print(f"\n{total:,} drops in {elapsed:.1f} s ({total / elapsed:,.0f}/s), {drains} drains with records: exact")
