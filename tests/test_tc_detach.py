"""clsact detach failures are logged: a warning when a filter may be left attached, debug when what it
removed is already gone (a deleted veth)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator

import pytest

from retina_otel.bpf.tc import FilterSpec, TcAttacher, list_filters
from retina_otel.sandbox import Sandbox

pytestmark = pytest.mark.kernel

SPEC = FilterSpec(name="rotel_test_detach", prio=0x1E9, handle=0x1E9B)


@pytest.fixture(scope="module")
def prog_fd() -> Iterator[int]:
    from bcc import BPF

    bpf = BPF(text=b"int rotel_t_detach(struct __sk_buff *skb) { return 0; }")
    try:
        yield int(bpf.load_func(b"rotel_t_detach", BPF.SCHED_CLS).fd)
    finally:
        bpf.cleanup()


def test_failed_detach_is_a_warning(sandbox: Sandbox, prog_fd: int, caplog: pytest.LogCaptureFixture) -> None:
    pod = sandbox.add_pod("a")
    attacher = TcAttacher(SPEC)
    attacher.attach(pod.host_ifindex, "ingress", prog_fd)
    attacher.iproute().close()  # the netlink socket fails under the attacher: nothing can be removed
    with caplog.at_level(logging.DEBUG, logger="retina_otel.bpf.tc"):
        attacher.detach_all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"ifindex {pod.host_ifindex} ingress" in m and "left attached" in m for m in warnings), warnings
    survivor = TcAttacher(SPEC)  # the filter is indeed still there; a working attacher removes it
    try:
        assert any(f[3] == SPEC.name for f in list_filters(survivor.iproute(), pod.host_ifindex, "ingress"))
    finally:
        survivor.detach(pod.host_ifindex)
        survivor.close()
    assert not any(f[3] == SPEC.name for f in list_filters(survivor.iproute(), pod.host_ifindex, "ingress"))


def test_detach_from_a_deleted_interface_is_debug(
    sandbox: Sandbox, prog_fd: int, caplog: pytest.LogCaptureFixture
) -> None:
    pod = sandbox.add_pod("a")
    attacher = TcAttacher(SPEC)
    attacher.attach(pod.host_ifindex, "egress", prog_fd)
    index = pod.host_ifindex
    subprocess.run(["ip", "link", "del", pod.host_veth], check=True)
    with caplog.at_level(logging.DEBUG, logger="retina_otel.bpf.tc"):
        attacher.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"ifindex {index}" in r.getMessage() and "already gone" in r.getMessage() for r in caplog.records)
