"""linuxutil: procfs and ethtool parsing against fixtures, and against real pod namespaces."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from retina_otel.component import CreateSettings
from retina_otel.receivers.linuxutil import FACTORY, LinuxUtilConfig, LinuxUtilReceiver
from retina_otel.receivers.linuxutil.ethtool import EthtoolError, EthtoolUnsupported, interface_stats
from retina_otel.receivers.linuxutil.procfs import (
    SocketSummary,
    connection_stats,
    decode_address,
    parse_netstat,
    parse_sockets,
    read_socket_summary,
)
from retina_otel.receivers.linuxutil.receiver import top_remote_addresses
from retina_otel.registry import get_factory
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import TestHost

NETSTAT = """\
TcpExt: SyncookiesSent ListenDrops LockDroppedIcmps TCPTimeouts TCPLossProbes TCPBacklogDrop DelayedACKs
TcpExt: 1 7 0 42 3 0 99
IpExt: InNoRoutes InOctets InCsumErrors
IpExt: 0 123456 2
MPTcpExt: MPCapableSYNRX DataCsumErr AddAddrDrop RmAddrDrop
MPTcpExt: 5 1 0 4
Broken: a b c
Broken: 1 2
"""

SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 10816
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn InCsumErrors
Tcp: 1 200 120000 -1 9
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 39 0 0 40 0 0 6 0 0
"""

TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP = TCP_HEADER + (
    "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n"
    "   1: 0100007F:9C40 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n"
    "   2: 0112C6C6:C350 0212C6C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n"
    "   3: 0112C6C6:C351 0212C6C6:1F90 06 00000000:00000000 03:00001000 00000000     0        0 0 3\n"
    "   4: 0112C6C6:C352 0312C6C6:1F90 08 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1\n"
)
TCP6 = TCP_HEADER + (
    "   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0\n"
    "   1: B80D0120000000000000000001000000:C350 B80D0120000000000000000002000000:1F90 01 "
    "00000000:00000000 00:00000000 00000000     0        0 6 1 0 20 4 30 10 -1\n"
    "   2: 0000000000000000FFFF00000112C6C6:C350 0000000000000000FFFF00000212C6C6:1F90 01 "
    "00000000:00000000 00:00000000 00000000     0        0 7 1 0 20 4 30 10 -1\n"
)
UDP = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref "
    "pointer drops\n"
    "  1: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 8 2 0 0\n"
    "  2: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9 2 0 0\n"
)

little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="fixtures are x86 procfs text")


# -- parsing ------------------------------------------------------------------------------------


def test_parse_netstat_pairs_and_skips_malformed() -> None:
    parsed = parse_netstat(NETSTAT)
    assert set(parsed) == {"TcpExt", "IpExt", "MPTcpExt"}  # "Broken" has fewer values than keys
    assert parsed["TcpExt"]["TCPTimeouts"] == 42
    assert parse_netstat(SNMP)["Tcp"]["MaxConn"] == -1
    assert parse_netstat("") == {}


def test_connection_stats_curated_keys_by_metric() -> None:
    stats = connection_stats(parse_netstat(NETSTAT), parse_netstat(SNMP), include_zero=False)
    # TcpExt and MPTcpExt curated keys -> tcp_connection_stats; zero values left out (as Retina).
    assert stats.tcp == {"ListenDrops": 7, "TCPTimeouts": 42, "TCPLossProbes": 3, "DataCsumErr": 1, "RmAddrDrop": 4}
    assert stats.ip == {"InCsumErrors": 2}  # IpExt -> ip_connection_stats
    assert stats.udp == {"InCsumErrors": 6}  # snmp Udp -> udp_connection_stats
    with_zero = connection_stats(parse_netstat(NETSTAT), parse_netstat(SNMP), include_zero=True)
    assert with_zero.tcp["LockDroppedIcmps"] == 0 and with_zero.tcp["TCPBacklogDrop"] == 0
    assert "SyncookiesSent" not in with_zero.tcp and "DelayedACKs" not in with_zero.tcp
    assert "InOctets" not in with_zero.ip


@little_endian
def test_decode_address() -> None:
    assert decode_address("0100007F") == "127.0.0.1"
    assert decode_address("0112C6C6") == "198.198.18.1"
    assert decode_address("B80D0120000000000000000001000000") == "2001:db8::1"
    assert decode_address("0000000000000000FFFF00000212C6C6") == "198.198.18.2"  # v4-mapped as v4


@little_endian
def test_parse_sockets_states_and_remotes() -> None:
    by_state, by_remote, rows = parse_sockets([TCP, TCP6])
    assert rows == 8
    assert by_state == {"LISTEN": 2, "ESTABLISHED": 4, "TIME_WAIT": 1, "CLOSE_WAIT": 1}
    # listeners (unspecified remote) and loopback peers are not remote addresses
    assert by_remote == {"198.198.18.2": 3, "198.198.18.3": 1, "2001:db8::2": 1}


def test_top_remote_addresses() -> None:
    counts = {"10.0.0.3": 1, "10.0.0.1": 5, "10.0.0.2": 5, "2001:db8::1": 2}
    assert top_remote_addresses(counts, 3) == {"10.0.0.1": 5, "10.0.0.2": 5, "2001:db8::1": 2}
    assert top_remote_addresses(counts, 0) == {}


def test_config() -> None:
    cfg = LinuxUtilConfig()
    assert (cfg.interval, cfg.include_interfaces, cfg.max_remote_addresses) == (10.0, None, 100)
    with pytest.raises(ValidationError):
        LinuxUtilConfig(max_remote_addresses=-1)
    with pytest.raises(ValidationError):
        LinuxUtilConfig.model_validate({"interfaces": ["eth0"]})
    assert get_factory("receiver", "linuxutil") is FACTORY


# -- the receiver over fixture files ----------------------------------------------------------


@pytest.fixture
def proc_net(tmp_path: Path) -> Path:
    for name, text in {"netstat": NETSTAT, "snmp": SNMP, "tcp": TCP, "tcp6": TCP6, "udp": UDP}.items():
        (tmp_path / name).write_text(text)
    return tmp_path  # no udp6: a missing file reads as empty (IPv6 disabled)


def _value(host: TestHost, name: str, *labels: str) -> float | None:
    family = host.metrics.get(name)
    assert family is not None, name
    value = family.value(labels)
    assert value is None or isinstance(value, float)
    return value


def _labels(host: TestHost, name: str) -> set[tuple[str, ...]]:
    family = host.metrics.get(name)
    assert family is not None
    return {labels for labels, _, _ in family.snapshot().series}


@little_endian
def test_receiver_publishes_fixture_values(proc_net: Path) -> None:
    receiver = LinuxUtilReceiver(
        CreateSettings("linuxutil", "receiver"),
        LinuxUtilConfig(interval=3600, max_remote_addresses=2, include_interfaces=()),
        proc_net=proc_net,
    )
    host = TestHost()
    receiver.start(host)
    try:
        assert _value(host, "networkobservability_tcp_state", "ESTABLISHED") == 4
        assert _value(host, "networkobservability_tcp_state", "SYN_SENT") == 0  # every state published
        assert _labels(host, "networkobservability_tcp_connection_remote") == {("198.198.18.2",), ("198.198.18.3",)}
        assert _value(host, "networkobservability_tcp_connection_remote", "198.198.18.2") == 3
        assert _value(host, "networkobservability_tcp_connection_stats", "TCPTimeouts") == 42
        assert _value(host, "networkobservability_ip_connection_stats", "InCsumErrors") == 2
        assert _value(host, "networkobservability_udp_connection_stats", "ACTIVE") == 2
        assert _value(host, "networkobservability_udp_connection_stats", "InCsumErrors") == 6
        assert _labels(host, "networkobservability_interface_stats") == set()  # include_interfaces=()

        # A peer goes away: its series goes too (not left at a stale value).
        (proc_net / "tcp").write_text(TCP_HEADER)
        (proc_net / "tcp6").write_text(TCP_HEADER)
        receiver.refresh()
        assert _labels(host, "networkobservability_tcp_connection_remote") == set()
        assert _value(host, "networkobservability_tcp_state", "ESTABLISHED") == 0
    finally:
        receiver.shutdown()
        receiver.shutdown()


def test_shutdown_before_start_and_collect_after_shutdown(proc_net: Path) -> None:
    receiver = FACTORY.create(CreateSettings("linuxutil", "receiver"), LinuxUtilConfig(), None)
    receiver.shutdown()  # never started: fine
    host = TestHost()
    lu = LinuxUtilReceiver(CreateSettings("linuxutil", "receiver"), LinuxUtilConfig(), proc_net=proc_net)
    lu.start(host)
    lu.shutdown()
    (proc_net / "tcp").write_text(TCP_HEADER)
    host.metrics.collect()  # the hook is inert after shutdown: values stay as last read
    assert _value(host, "networkobservability_tcp_state", "LISTEN") == 2


# -- real namespaces ----------------------------------------------------------------------------


def _connect_many(server: Pod, client: Pod, family: socket.AddressFamily, n: int) -> list[socket.socket]:
    """``n`` established TCP connections from ``client`` to ``server``; returns every socket (close them)."""
    addr = server.ipv4 if family == socket.AF_INET else server.ipv6
    assert addr is not None
    with server.entered():
        listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((addr, 0))
    listener.listen(n)
    port = listener.getsockname()[1]
    socks = [listener]
    with client.entered():
        clients = [socket.socket(family, socket.SOCK_STREAM) for _ in range(n)]
    for c in clients:
        socks.append(c)
        c.settimeout(5)
        c.connect((addr, port))
    listener.settimeout(5)
    socks.extend(listener.accept()[0] for _ in range(n))
    return socks


@pytest.fixture
def pods(sandbox: Sandbox) -> Iterator[tuple[Pod, Pod]]:
    yield sandbox.add_pod("srv"), sandbox.add_pod("cli")


@pytest.mark.kernel
def test_thread_self_follows_the_pod_namespace(pods: tuple[Pod, Pod]) -> None:
    server, client = pods
    socks = _connect_many(server, client, socket.AF_INET, 3)
    try:
        host_view = read_socket_summary()
        views: list[SocketSummary] = []

        def in_pod() -> None:  # another thread: /proc/net (= /proc/self/net) follows the main thread
            with client.entered():
                views.extend([read_socket_summary(), read_socket_summary(Path("/proc/net"))])

        worker = threading.Thread(target=in_pod)
        worker.start()
        worker.join()
        pod_view, process_view = views
        assert pod_view.tcp_by_state == {"ESTABLISHED": 3}
        assert pod_view.tcp_by_remote == {server.ipv4: 3}
        assert server.ipv4 not in process_view.tcp_by_remote
        assert server.ipv4 not in host_view.tcp_by_remote
    finally:
        for s in socks:
            s.close()


@pytest.mark.kernel
def test_receiver_in_pod_namespaces_counts_real_connections(pods: tuple[Pod, Pod]) -> None:
    server, client = pods
    receiver = LinuxUtilReceiver(
        CreateSettings("linuxutil", "receiver"),
        LinuxUtilConfig(interval=3600, include_zero_values=True),
    )
    host = TestHost()
    receiver.start(host)
    socks = _connect_many(server, client, socket.AF_INET, 4) + _connect_many(server, client, socket.AF_INET6, 2)
    with client.entered():
        udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        udp.append(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    for u in udp:
        u.bind(("::" if u.family == socket.AF_INET6 else "0.0.0.0", 0))
    try:
        with client.entered():
            receiver.refresh()
        assert _value(host, "networkobservability_tcp_state", "ESTABLISHED") == 6
        assert _value(host, "networkobservability_tcp_state", "LISTEN") == 0
        assert _labels(host, "networkobservability_tcp_connection_remote") == {(server.ipv4,), (server.ipv6,)}
        assert _value(host, "networkobservability_tcp_connection_remote", server.ipv4) == 4
        assert _value(host, "networkobservability_tcp_connection_remote", server.ipv6) == 2
        assert _value(host, "networkobservability_udp_connection_stats", "ACTIVE") == 4
        # The pod has eth0 (a veth): its error/drop statistics, zero included, and nothing else.
        iface = _labels(host, "networkobservability_interface_stats")
        assert ("eth0", "rx_queue_0_drops") in iface
        assert all(i == "eth0" and ("err" in k or "drop" in k) for i, k in iface)

        with server.entered():
            receiver.refresh()
        assert _value(host, "networkobservability_tcp_state", "ESTABLISHED") == 6
        assert _value(host, "networkobservability_tcp_state", "LISTEN") == 2
        assert _value(host, "networkobservability_udp_connection_stats", "ACTIVE") == 0
    finally:
        for s in socks + udp:
            s.close()
        receiver.shutdown()


def _ethtool_cli(ifname: str) -> dict[str, int]:
    out = subprocess.run(["ethtool", "-S", ifname], capture_output=True, text=True, check=True).stdout
    stats: dict[str, int] = {}
    for line in out.splitlines()[1:]:
        key, _, value = line.strip().rpartition(":")
        stats[key] = int(value)
    return stats


@pytest.mark.kernel
def test_ethtool_ioctl_matches_ethtool_cli(pods: tuple[Pod, Pod]) -> None:
    server, _ = pods
    ours = interface_stats(server.host_veth)
    assert ours == _ethtool_cli(server.host_veth)
    peer = int(server.run(["cat", "/sys/class/net/eth0/ifindex"]).stdout)
    assert ours["peer_ifindex"] == peer
    with pytest.raises(EthtoolUnsupported):
        interface_stats("lo")
    with pytest.raises(EthtoolError):
        interface_stats("rotelnone0")


@pytest.mark.kernel
def test_interface_series_follow_interfaces(pods: tuple[Pod, Pod]) -> None:
    server, client = pods
    receiver = LinuxUtilReceiver(
        CreateSettings("linuxutil", "receiver"),
        LinuxUtilConfig(
            interval=3600, include_zero_values=True, include_interfaces=(server.host_veth, client.host_veth)
        ),
    )
    host = TestHost()
    receiver.start(host)
    try:
        names = {i for i, _ in _labels(host, "networkobservability_interface_stats")}
        assert names == {server.host_veth, client.host_veth}
        subprocess.run(["ip", "link", "del", client.host_veth], check=True)
        receiver.refresh()
        names = {i for i, _ in _labels(host, "networkobservability_interface_stats")}
        assert names == {server.host_veth}
    finally:
        receiver.shutdown()
