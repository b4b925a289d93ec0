"""packetforward: exact packet and byte counts per direction from real traffic between sandbox pods."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from retina_otel.component import CreateSettings
from retina_otel.receivers.packetforward import (
    FACTORY,
    PacketForwardConfig,
    PacketForwardReceiver,
    default_route_interfaces,
)
from retina_otel.registry import get_factory
from retina_otel.sandbox import GATEWAY4, HOST_LINK_LOCAL6, HOST_MAC, Pod, Sandbox
from retina_otel.testing import TestHost

ETH = 14
UDP4 = ETH + 20 + 8  # Ethernet + IPv4 + UDP headers in front of the payload
UDP6 = ETH + 40 + 8

# -- config and helpers (no kernel) ------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = PacketForwardConfig()
    assert cfg.interfaces == () and cfg.interval == 10.0 and cfg.count_broadcast_multicast is False
    with pytest.raises(ValidationError):
        PacketForwardConfig(interval=0)
    with pytest.raises(ValidationError):
        PacketForwardConfig.model_validate({"bogus": 1})
    with pytest.raises(ValidationError):
        cfg.interval = 5  # type: ignore[misc]  # frozen


def test_factory_is_registered() -> None:
    assert get_factory("receiver", "packetforward") is FACTORY


def test_default_route_interfaces(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth1\t00000000\t010300C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    )
    route6 = tmp_path / "ipv6_route"
    z = "0" * 32
    route6.write_text(
        f"fd000000000000000000000000000000 40 {z} 00 {z} 00000100 00000001 00000000 00000001     eth0\n"
        f"{z} 00 {z} 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth2\n"
        f"{z} 00 {z} 00 {z} ffffffff 00000001 00000000 00200200       lo\n"
    )
    assert default_route_interfaces(str(route), str(route6)) == ["eth0", "eth1", "eth2"]
    assert default_route_interfaces(str(tmp_path / "none"), str(tmp_path / "none6")) == []


def test_constructor_does_no_io() -> None:
    receiver = FACTORY.create(CreateSettings("packetforward", "receiver"), PacketForwardConfig(), None)
    assert isinstance(receiver, PacketForwardReceiver)
    receiver.shutdown()  # safe before start
    receiver.shutdown()


# -- kernel tests -------------------------------------------------------------------------------


def _pin_neighbours(pod: Pod) -> None:
    """Permanent ARP/ND entries on both sides, so no ARP or ND packet crosses the veth during a test."""
    mac = pod.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    pod.run(["ip", "neigh", "replace", GATEWAY4, "lladdr", HOST_MAC, "dev", "eth0", "nud", "permanent"])
    pod.run(["ip", "-6", "neigh", "replace", HOST_LINK_LOCAL6, "lladdr", HOST_MAC, "dev", "eth0", "nud", "permanent"])
    host = ["ip", "neigh", "replace", pod.ipv4, "lladdr", mac, "dev", pod.host_veth, "nud", "permanent"]
    subprocess.run(host, check=True)
    assert pod.ipv6 is not None
    host6 = ["ip", "-6", "neigh", "replace", pod.ipv6, "lladdr", mac, "dev", pod.host_veth, "nud", "permanent"]
    subprocess.run(host6, check=True)


def _udp(sender: Pod, receiver: Pod, family: socket.AddressFamily, count: int, payload: int) -> None:
    """Send ``count`` datagrams of ``payload`` bytes from one pod to the other and receive them all."""
    dst = receiver.ipv4 if family == socket.AF_INET else receiver.ipv6
    assert dst is not None
    with receiver.entered():
        rx = socket.socket(family, socket.SOCK_DGRAM)
    with sender.entered():
        tx = socket.socket(family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((dst, 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        for _ in range(count):
            tx.sendto(b"\x5a" * payload, (dst, port))
        for _ in range(count):
            assert len(rx.recv(65535)) == payload


def _totals(host: TestHost) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for snap in host.metrics.collect():  # the collect hook reads the kernel map first
        if snap.name.startswith("networkobservability_forward_"):
            for labels, value, _ in snap.series:
                assert isinstance(value, float)
                out[(snap.name.rsplit("_", 1)[1], labels[0])] = value
    return out


@pytest.fixture
def pods(sandbox: Sandbox) -> Iterator[tuple[Pod, Pod]]:
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    _pin_neighbours(a)
    _pin_neighbours(b)
    yield a, b


@pytest.fixture
def started(pods: tuple[Pod, Pod]) -> Iterator[tuple[PacketForwardReceiver, TestHost, Pod, Pod]]:
    a, b = pods
    receiver = PacketForwardReceiver(
        CreateSettings("packetforward", "receiver"), PacketForwardConfig(interfaces=(a.host_veth,), interval=3600)
    )
    host = TestHost()
    receiver.start(host)
    try:
        yield receiver, host, a, b
    finally:
        receiver.shutdown()


def _wait_quiet(receiver: PacketForwardReceiver, quiet_s: float = 2.5, limit_s: float = 15.0) -> None:
    """Wait until the interface carries nothing for ``quiet_s``: a new veth's IPv6 start-up (MLD reports,
    DAD) sends a few packets on its own in the first seconds, which would land in an exact count."""
    deadline = time.monotonic() + limit_s
    last, since = receiver.read_totals(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = receiver.read_totals()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


@pytest.mark.kernel
def test_exact_counts_per_direction(started: tuple[PacketForwardReceiver, TestHost, Pod, Pod]) -> None:
    receiver, host, a, b = started
    _wait_quiet(receiver)
    before = _totals(host)
    assert set(before) == {(k, d) for k in ("count", "bytes") for d in ("ingress", "egress")}
    # a -> b crosses a's host-side veth as ingress (the host receives it from the pod);
    # b -> a crosses it as egress (the host sends it into the pod).
    _udp(a, b, socket.AF_INET, 37, 100)
    _udp(a, b, socket.AF_INET6, 11, 333)
    _udp(b, a, socket.AF_INET, 23, 512)
    _udp(b, a, socket.AF_INET6, 5, 1)
    after = _totals(host)
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {
        ("count", "ingress"): 37 + 11,
        ("bytes", "ingress"): 37 * (100 + UDP4) + 11 * (333 + UDP6),
        ("count", "egress"): 23 + 5,
        ("bytes", "egress"): 23 * (512 + UDP4) + 5 * (1 + UDP6),
    }
    # The same totals straight from the kernel map; the store holds cumulative totals (monotonic).
    raw = receiver.read_totals()
    assert raw["ingress"] == (after[("count", "ingress")], after[("bytes", "ingress")])
    assert raw["egress"] == (after[("count", "egress")], after[("bytes", "egress")])
    assert all(host.metrics.get(n) is not None for n in ("networkobservability_forward_count",))


@pytest.mark.kernel
def test_traffic_elsewhere_is_not_counted(started: tuple[PacketForwardReceiver, TestHost, Pod, Pod]) -> None:
    _, host, a, b = started
    sandbox = a.sandbox
    c = sandbox.add_pod("c")
    _pin_neighbours(c)
    before = _totals(host)
    _udp(b, c, socket.AF_INET, 20, 64)  # b <-> c never touches a's veth
    assert _totals(host) == before


def _packet_sockets() -> int:
    return len(Path("/proc/net/packet").read_text().splitlines()) - 1


def _bpf_prog_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-prog":
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.kernel
def test_shutdown_detaches(pods: tuple[Pod, Pod]) -> None:
    a, b = pods
    sockets, progs, fds = _packet_sockets(), _bpf_prog_fds(), len(os.listdir("/proc/self/fd"))
    receiver = PacketForwardReceiver(
        CreateSettings("packetforward", "receiver"),
        PacketForwardConfig(interfaces=(a.host_veth, b.host_veth), interval=0.05),
    )
    receiver.start(TestHost())
    assert _packet_sockets() == sockets + 2
    assert _bpf_prog_fds() == progs + 1
    receiver.shutdown()
    receiver.shutdown()  # idempotent
    assert _packet_sockets() == sockets
    assert _bpf_prog_fds() == progs
    assert len(os.listdir("/proc/self/fd")) == fds
    assert not any(t.name.startswith("packetforward-poll") for t in threading.enumerate())


@pytest.mark.kernel
def test_missing_interface_is_a_clear_error(pods: tuple[Pod, Pod]) -> None:
    a, _ = pods
    sockets, progs = _packet_sockets(), _bpf_prog_fds()
    receiver = PacketForwardReceiver(
        CreateSettings("packetforward", "receiver"), PacketForwardConfig(interfaces=(a.host_veth, "rotelnone0"))
    )
    with pytest.raises(RuntimeError, match=r"interface\(s\) not found: rotelnone0"):
        receiver.start(TestHost())
    receiver.shutdown()
    assert (_packet_sockets(), _bpf_prog_fds()) == (sockets, progs)


@pytest.mark.kernel
def test_interface_vanishes_and_returns(started: tuple[PacketForwardReceiver, TestHost, Pod, Pod]) -> None:
    receiver, host, a, b = started
    _udp(a, b, socket.AF_INET, 3, 10)
    counted = _totals(host)
    sockets = _packet_sockets()
    subprocess.run(["ip", "link", "del", a.host_veth], check=True)  # the pod's eth0 goes with it
    assert _totals(host) == counted  # no crash, totals kept (monotonic)
    assert _packet_sockets() == sockets - 1  # the dead interface's socket is closed
    # An interface of the same name comes back: the receiver attaches to it on the next read.
    peer = f"{a.host_veth}x"
    subprocess.run(["ip", "link", "add", a.host_veth, "type", "veth", "peer", "name", peer], check=True)
    try:
        subprocess.run(["ip", "link", "set", a.host_veth, "up"], check=True)
        _totals(host)
        assert _packet_sockets() == sockets
        assert receiver.interfaces == [a.host_veth]
    finally:
        subprocess.run(["ip", "link", "del", a.host_veth], check=False)


@pytest.mark.kernel
def test_default_interfaces_resolve_at_start() -> None:
    expected = default_route_interfaces()
    if not expected:
        pytest.fail("this machine has no default route; the test needs one")
    receiver = PacketForwardReceiver(CreateSettings("packetforward", "receiver"), PacketForwardConfig())
    try:
        receiver.start(TestHost())
        assert receiver.interfaces == expected
    finally:
        receiver.shutdown()
