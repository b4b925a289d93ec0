"""TCX attachment (BPF links) in the real kernel: what is ours, what is not, and that packets pass.

Every test closes the links and filters it made in ``finally`` (the sandbox fixture removes the pods);
a link fd that leaks would be closed by the kernel at process exit anyway.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.bpf import tcx
from retina_otel.bpf.tc import FilterSpec, TcAttacher, TcError, list_filters, make_attacher
from retina_otel.bpf.tcx import TcxAttacher, link_info, prog_info, tcx_link_create, tcx_query, tcx_supported
from retina_otel.component import CreateSettings
from retina_otel.receivers.packetparser import FACTORY, PacketParserConfig
from retina_otel.receivers.packetparser.receiver import FILTER_SPEC, PacketParserReceiver
from retina_otel.sandbox import Sandbox
from retina_otel.testing import CollectingConsumer, TestHost

pytestmark = pytest.mark.kernel

SPEC = FilterSpec(name="rotel_test_tcx", prio=0x1E8, handle=0x1E8B)
FOREIGN_SPEC = FilterSpec(name="foreign_test", prio=0x77, handle=0x77)

# Counters: 0/1 our TCX program at ingress/egress, 2 a foreign TCX program after ours (ingress),
# 3 a foreign cls_bpf filter (ingress). Only IPv4 ICMP is counted, so a ping's packets are exact.
PROGRAMS = b"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

BPF_ARRAY(counts, u64, 4);

static __always_inline int count_icmp(struct __sk_buff *skb, int idx) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != 1)
        return TC_ACT_UNSPEC;
    u64 *v = counts.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
    return TC_ACT_UNSPEC;
}

int rotel_t_noop(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
int rotel_t_noop2(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
int rotel_t_foreign(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
int rotel_t_in(struct __sk_buff *skb) { return count_icmp(skb, 0); }
int rotel_t_out(struct __sk_buff *skb) { return count_icmp(skb, 1); }
int rotel_t_next(struct __sk_buff *skb) { return count_icmp(skb, 2); }
int rotel_t_cls(struct __sk_buff *skb) { return count_icmp(skb, 3); }
"""


class Progs:
    def __init__(self, bpf: Any) -> None:
        from bcc import BPF

        self.bpf = bpf
        self.fd = {
            name: int(bpf.load_func(name.encode(), BPF.SCHED_CLS).fd)
            for name in (
                "rotel_t_noop",
                "rotel_t_noop2",
                "rotel_t_foreign",
                "rotel_t_in",
                "rotel_t_out",
                "rotel_t_next",
                "rotel_t_cls",
            )
        }

    def id(self, name: str) -> int:
        return prog_info(self.fd[name])[0]

    def counts(self) -> list[int]:
        table = self.bpf["counts"]
        return [int(table[ctypes.c_int(i)].value) for i in range(4)]


@pytest.fixture(scope="module")
def progs() -> Iterator[Progs]:
    from bcc import BPF

    bpf = BPF(text=PROGRAMS)
    try:
        yield Progs(bpf)
    finally:
        bpf.cleanup()


def _ids(ifindex: int, hook: str) -> list[int]:
    return [e.prog_id for e in tcx_query(ifindex, hook)]  # type: ignore[arg-type]


def _filter_names(ifindex: int, hook: str) -> list[str]:
    att = TcAttacher(FOREIGN_SPEC)
    try:
        return sorted(f[3] for f in list_filters(att.iproute(), ifindex, hook))  # type: ignore[arg-type]
    finally:
        att.close()


def test_tcx_supported_and_mode_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tcx_supported()  # Linux 6.18 here
    assert tcx_query(1, "ingress") == [] or all(e.prog_id for e in tcx_query(1, "ingress"))
    for mode, kind in (("auto", TcxAttacher), ("tcx", TcxAttacher), ("clsact", TcAttacher)):
        att = make_attacher(SPEC, mode)  # type: ignore[arg-type]
        try:
            assert type(att) is kind
        finally:
            att.close()
    monkeypatch.setattr(tcx, "tcx_supported", lambda: False)
    assert type(make_attacher(SPEC, "auto")) is TcAttacher
    with pytest.raises(TcError, match="attach_mode 'tcx' needs TCX"):
        make_attacher(SPEC, "tcx")


def test_attach_replace_detach(sandbox: Sandbox, progs: Progs) -> None:
    a = sandbox.add_pod("a")
    idx = a.host_ifindex
    att = TcxAttacher(SPEC)
    try:
        att.attach(idx, "ingress", progs.fd["rotel_t_noop"])
        fd = att.link_fd(idx, "ingress")
        assert fd is not None
        info = link_info(fd)
        assert (info.ifindex, info.hook, info.prog_id) == (idx, "ingress", progs.id("rotel_t_noop"))
        entries = tcx_query(idx, "ingress")
        assert [(e.prog_id, e.link_id, e.prog_name) for e in entries] == [
            (progs.id("rotel_t_noop"), info.id, "rotel_t_noop")
        ]
        assert _ids(idx, "egress") == []
        assert att.attached() == {(idx, "ingress")}
        # Attaching again on the same hook swaps the program of the same link: still one of ours.
        att.attach(idx, "ingress", progs.fd["rotel_t_noop2"])
        assert [(e.prog_id, e.link_id) for e in tcx_query(idx, "ingress")] == [(progs.id("rotel_t_noop2"), info.id)]
        att.attach(idx, "egress", progs.fd["rotel_t_noop"])
        assert _ids(idx, "egress") == [progs.id("rotel_t_noop")]
        assert att.attached() == {(idx, "ingress"), (idx, "egress")}
        att.detach(idx)
        assert _ids(idx, "ingress") == [] and _ids(idx, "egress") == []
        assert att.attached() == set()
    finally:
        att.close()


def test_foreign_links_and_filters_stay(sandbox: Sandbox, progs: Progs) -> None:
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    foreign_filters = TcAttacher(FOREIGN_SPEC)
    leftovers = TcAttacher(SPEC)  # what a killed clsact-mode agent with our spec would have left
    foreign_links: list[int] = []
    att = TcxAttacher(SPEC)
    try:
        for pod in (a, b):
            foreign_filters.attach(pod.host_ifindex, "ingress", progs.fd["rotel_t_foreign"])
            leftovers.attach(pod.host_ifindex, "ingress", progs.fd["rotel_t_noop"])
            leftovers.attach(pod.host_ifindex, "egress", progs.fd["rotel_t_noop"])
            for hook in ("ingress", "egress"):
                foreign_links.append(tcx_link_create(progs.fd["rotel_t_foreign"], pod.host_ifindex, hook))  # type: ignore[arg-type]
        assert _filter_names(a.host_ifindex, "ingress") == ["foreign_test", SPEC.name]
        for pod in (a, b):
            att.attach(pod.host_ifindex, "ingress", progs.fd["rotel_t_noop"])
            att.attach(pod.host_ifindex, "egress", progs.fd["rotel_t_noop"])
        foreign, ours = progs.id("rotel_t_foreign"), progs.id("rotel_t_noop")
        for pod in (a, b):
            for hook in ("ingress", "egress"):
                assert _ids(pod.host_ifindex, hook) == [foreign, ours]  # appended after the foreign link
            # Our clsact leftovers went at the first attachment; the foreign filter stayed.
            assert _filter_names(pod.host_ifindex, "ingress") == ["foreign_test"]
            assert _filter_names(pod.host_ifindex, "egress") == []
        att.detach_all()
        assert att.attached() == set()
        for pod in (a, b):
            for hook in ("ingress", "egress"):
                assert _ids(pod.host_ifindex, hook) == [foreign]
            assert _filter_names(pod.host_ifindex, "ingress") == ["foreign_test"]
    finally:
        att.close()
        for fd in foreign_links:
            os.close(fd)
        foreign_filters.close()
        leftovers.close()


def test_forget_after_interface_deleted_and_errors(sandbox: Sandbox, progs: Progs) -> None:
    a = sandbox.add_pod("a")
    idx = a.host_ifindex
    att = TcxAttacher(SPEC)
    try:
        att.attach(idx, "ingress", progs.fd["rotel_t_noop"])
        att.attach(idx, "egress", progs.fd["rotel_t_noop"])
        fd = att.link_fd(idx, "ingress")
        assert fd is not None
        subprocess.run(["ip", "link", "del", a.host_veth], check=True)
        assert link_info(fd).ifindex == 0  # the kernel detached the link with the device
        att.forget(idx)
        assert att.attached() == set()
        att.forget(idx)  # twice: still nothing to complain about
        with pytest.raises(TcError, match=rf"ifindex {idx} egress"):
            att.attach(idx, "egress", progs.fd["rotel_t_noop"])
        assert att.attached() == set()
    finally:
        att.close()


def test_unspec_passes_packets_to_later_programs(sandbox: Sandbox, progs: Progs) -> None:
    """TC_ACT_UNSPEC is TCX_NEXT: the packet goes on to a later TCX link and to the clsact filters,
    and the ping gets every reply."""
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    idx = a.host_ifindex
    att = TcxAttacher(SPEC)
    classic = TcAttacher(FOREIGN_SPEC)
    later: int | None = None
    before = progs.counts()
    try:
        att.attach(idx, "ingress", progs.fd["rotel_t_in"])
        att.attach(idx, "egress", progs.fd["rotel_t_out"])
        later = tcx_link_create(progs.fd["rotel_t_next"], idx, "ingress")
        classic.attach(idx, "ingress", progs.fd["rotel_t_cls"])
        assert _ids(idx, "ingress") == [progs.id("rotel_t_in"), progs.id("rotel_t_next")]
        out = a.run(["ping", "-4", "-c", "5", "-i", "0.05", "-W", "2", b.ipv4])
        assert out.returncode == 0 and " 0% packet loss" in out.stdout
        counts = [n - m for n, m in zip(progs.counts(), before, strict=True)]
        # 5 echo requests leave pod a (veth ingress), 5 replies enter it (veth egress).
        assert counts == [5, 5, 5, 5]
    finally:
        att.close()
        classic.close()
        if later is not None:
            os.close(later)


def test_receiver_tcx_attaches_replaces_leftovers_and_cleans_up(sandbox: Sandbox, progs: Progs) -> None:
    """The packetparser receiver in TCX mode: links on both hooks, the clsact filters an older agent
    left removed at start, foreign attachments untouched, nothing of ours after shutdown."""
    a = sandbox.add_pod("a")
    idx = a.host_ifindex
    leftovers = TcAttacher(FILTER_SPEC)
    foreign_filters = TcAttacher(FOREIGN_SPEC)
    foreign_link: int | None = None
    receiver: PacketParserReceiver | None = None
    try:
        leftovers.attach(idx, "ingress", progs.fd["rotel_t_noop"])
        leftovers.attach(idx, "egress", progs.fd["rotel_t_noop"])
        foreign_filters.attach(idx, "ingress", progs.fd["rotel_t_foreign"])
        foreign_link = tcx_link_create(progs.fd["rotel_t_foreign"], idx, "ingress")
        cfg = PacketParserConfig(interfaces=(f"ro{sandbox.token}*",), host_interface="none", attach_mode="tcx")
        created = FACTORY.create(CreateSettings("packetparser", "receiver"), cfg, CollectingConsumer())
        assert isinstance(created, PacketParserReceiver)
        receiver = created
        receiver.start(TestHost())
        assert idx in receiver.attached_interfaces()
        ours_in = prog_info(receiver.entry_program_fd("from_endpoint"))[0]
        ours_out = prog_info(receiver.entry_program_fd("to_endpoint"))[0]
        foreign = progs.id("rotel_t_foreign")
        assert _ids(idx, "ingress") == [foreign, ours_in]
        assert _ids(idx, "egress") == [ours_out]
        assert _filter_names(idx, "ingress") == ["foreign_test"]
        assert _filter_names(idx, "egress") == []
        receiver.shutdown()
        assert _ids(idx, "ingress") == [foreign] and _ids(idx, "egress") == []
        assert _filter_names(idx, "ingress") == ["foreign_test"]
    finally:
        if receiver is not None:
            receiver.shutdown()
        if foreign_link is not None:
            os.close(foreign_link)
        foreign_filters.close()
        leftovers.close()
