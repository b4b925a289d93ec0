"""dropreason with ``reason_names: retina``: Retina's reason names and directions on real drops.

Every kind of drop this machine can produce that Retina names: netfilter rule drops (nftables input and
output chains, iptables with the nf_tables backend, iptables-legacy) -> IPTABLE_RULE_DROP with direction
"unknown" (NAT and conntrack-insert failures are netfilter verdict drops too, reported by the kernel under
the same reason; no test here makes NAT or conntrack fail); the accept
queue of a listener overflowing when the handshake's last ACK arrives (TCP_LISTEN_OVERFLOW) ->
TCP_ACCEPT_BASIC with direction "ingress"; anything else (UDP to a closed port: NO_SOCKET) -> UNKNOWN_DROP.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest

from retina_otel.component import CreateSettings
from retina_otel.flows import STRINGS, Direction
from retina_otel.receivers.dropreason import FACTORY, DropReasonConfig, DropReasonReceiver
from retina_otel.receivers.dropreason.retinanames import RETINA_DIRECTIONS, retina_direction, retina_reason
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost, wait_for
from tests.test_dropreason import _metric, _nft, _rows, _send_udp, _wait_rows

DROP = "networkobservability_drop_count"


def test_mapping_table() -> None:
    assert retina_reason("NETFILTER_DROP") == "IPTABLE_RULE_DROP"
    assert retina_reason("TCP_LISTEN_OVERFLOW") == "TCP_ACCEPT_BASIC"
    assert retina_reason("NO_SOCKET") == retina_reason("QDISC_DROP") == "UNKNOWN_DROP"
    # Retina's directions: only its TCP hooks know one.
    assert {r: retina_direction(r) for r in RETINA_DIRECTIONS} == {
        "IPTABLE_RULE_DROP": "unknown", "IPTABLE_NAT_DROP": "unknown", "CONNTRACK_ADD_DROP": "unknown",
        "TCP_CONNECT_BASIC": "egress", "TCP_ACCEPT_BASIC": "ingress", "UNKNOWN_DROP": "unknown",
    }
    assert DropReasonConfig().reason_names == "kernel"


@pytest.fixture
def receiver() -> Iterator[tuple[DropReasonReceiver, TestHost, CollectingConsumer]]:
    host, consumer = TestHost(), CollectingConsumer()
    config = DropReasonConfig(interval=3600, reason_names="retina")
    rcv = FACTORY.create(CreateSettings("dropreason", "receiver"), config, consumer)
    assert isinstance(rcv, DropReasonReceiver)
    try:
        rcv.start(host)
        yield rcv, host, consumer
    finally:
        rcv.shutdown()


def _run(pod: Pod, *argv: str) -> None:
    proc = subprocess.run(pod.exec_args(list(argv)), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _named(rows: np.ndarray) -> set[str]:
    return {STRINGS.name(int(x)) for x in rows["drop_reason"]}


def _reason_rows(consumer: CollectingConsumer, reason: str) -> np.ndarray:
    r = consumer.records()
    return r[r["drop_reason"] == STRINGS.intern(reason)]


@pytest.mark.kernel
def test_rule_drops_are_iptable_rule_drop_with_unknown_direction(
    sandbox: Sandbox, receiver: tuple[DropReasonReceiver, TestHost, CollectingConsumer]
) -> None:
    rcv, host, consumer = receiver
    a, b = sandbox.add_pod("a", ipv6=False), sandbox.add_pod("b", ipv6=False)
    _nft(b, "input", "udp dport 7001 drop")  # nftables, received: the kernel says ingress
    _nft(a, "output", "udp dport 7002 drop")  # nftables, sent: egress
    _run(b, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "7003", "-j", "DROP")
    _run(b, "iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "7004", "-j", "DROP")
    sent = {7001: 11, 7002: 12, 7003: 13, 7004: 14}
    for port, n in sent.items():
        _send_udp(a, b.ipv4, port, n)
    for port, n in sent.items():
        rows = _wait_rows(rcv, consumer, a.ipv4, b.ipv4, port, n)
        assert int(rows["packets"].sum()) == n, port
        assert _named(rows) == {"IPTABLE_RULE_DROP"}, port
        # Flow records keep the observed direction (flowmetrics attributes the drop to a pod by it).
        want = Direction.EGRESS if port == 7002 else Direction.INGRESS
        assert set(rows["direction"].tolist()) == {int(want)}, port
    # The node's metrics: Retina's label set, every rule drop of the node under direction "unknown".
    rule = _reason_rows(consumer, "IPTABLE_RULE_DROP")
    assert _metric(host, DROP, ("IPTABLE_RULE_DROP", "unknown")) == rule["packets"].sum() >= sum(sent.values())
    for direction in ("ingress", "egress"):
        assert _metric(host, DROP, ("IPTABLE_RULE_DROP", direction)) == 0
        assert _metric(host, DROP, ("NETFILTER_DROP", direction)) == 0


@pytest.mark.kernel
def test_other_reasons_are_unknown_drop(
    sandbox: Sandbox, receiver: tuple[DropReasonReceiver, TestHost, CollectingConsumer]
) -> None:
    rcv, host, consumer = receiver
    a, b = sandbox.add_pod("a", ipv6=False), sandbox.add_pod("b", ipv6=False)
    _send_udp(a, b.ipv4, 7010, 9)  # nobody listens: NO_SOCKET in the kernel's words
    rows = _wait_rows(rcv, consumer, a.ipv4, b.ipv4, 7010, 9)
    assert int(rows["packets"].sum()) == 9 and _named(rows) == {"UNKNOWN_DROP"}
    assert _metric(host, DROP, ("UNKNOWN_DROP", "unknown")) >= 9


@pytest.mark.kernel
def test_accept_queue_overflow_is_tcp_accept_basic_ingress(
    sandbox: Sandbox, receiver: tuple[DropReasonReceiver, TestHost, CollectingConsumer]
) -> None:
    """A listener (backlog 4, never accepting, no SYN cookies) with three connections queued; five more
    handshakes get their SYN-ACK while their last ACK is held back, then the ACKs pass: two children fit,
    the other ACKs find the accept queue full (TCP_LISTEN_OVERFLOW in the kernel)."""
    rcv, host, consumer = receiver
    a, b = sandbox.add_pod("a", ipv6=False), sandbox.add_pod("b", ipv6=False)
    port = 7600
    _run(b, "sysctl", "-qw", "net.ipv4.tcp_syncookies=0")
    with b.entered():
        listener = socket.socket()
    sockets: list[socket.socket] = [listener]
    try:
        listener.bind((b.ipv4, port))
        listener.listen(4)
        for _ in range(3):
            with a.entered():
                c = socket.socket()
            sockets.append(c)
            c.connect((b.ipv4, port))
        hold = f"tcp dport {port} tcp flags & (syn | ack) == ack drop"
        held = (
            "table ip rotel_hold {\n chain input {\n type filter hook input priority 0\n " + hold + "\n }\n}\n"
        )
        proc = subprocess.run(b.exec_args(["nft", "-f", "-"]), input=held, text=True, capture_output=True)
        assert proc.returncode == 0, proc.stderr
        for _ in range(5):
            with a.entered():
                c = socket.socket()
            sockets.append(c)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect((b.ipv4, port))
        time.sleep(0.3)
        _run(b, "nft", "delete", "table", "ip", "rotel_hold")

        def overflowed() -> bool:
            rcv.flush()
            rows = _rows(consumer, a.ipv4, b.ipv4, port)
            return bool((rows["drop_reason"] == STRINGS.intern("TCP_ACCEPT_BASIC")).any())

        assert wait_for(overflowed, timeout=10), _named(_rows(consumer, a.ipv4, b.ipv4, port))
    finally:
        for s in sockets:
            s.close()
    rows = _rows(consumer, a.ipv4, b.ipv4, port)
    accept = rows[rows["drop_reason"] == STRINGS.intern("TCP_ACCEPT_BASIC")]
    assert set(accept["direction"].tolist()) == {int(Direction.INGRESS)} and set(accept["proto"].tolist()) == {6}
    everywhere = _reason_rows(consumer, "TCP_ACCEPT_BASIC")
    assert _metric(host, DROP, ("TCP_ACCEPT_BASIC", "ingress")) == everywhere["packets"].sum() > 0
