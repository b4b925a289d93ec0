"""Drops that are drops: with real traffic, a packet lost on its way (an nft drop) is a drop, and the
stack's own housekeeping (data for a socket the application closed: TCP_ABORT_ON_DATA, and the RST that
answers it) is counted apart by default, or as a drop with ``stack_discards: as_drops``."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from retina_otel.bpf.btf import BtfError
from retina_otel.component import CreateSettings
from retina_otel.flows import STRINGS, ip_to_bytes
from retina_otel.receivers.dropreason import FACTORY, DropReasonConfig, DropReasonReceiver
from retina_otel.receivers.dropreason.categories import STACK_REASONS
from retina_otel.receivers.dropreason.reasons import resolve_reasons
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost
from tests.test_dropreason import _nft, _send_udp

CONNECTIONS = 8
UDP = 25


def test_stack_reasons_exist_in_this_kernel() -> None:
    """Every name in the list is a reason of the running kernel (a typo would silently count it as a drop)."""
    try:
        names = set(resolve_reasons().names.values())
    except (OSError, BtfError) as exc:  # pragma: no cover - no tracefs and no BTF
        pytest.fail(f"drop reasons not readable: {exc}")
    assert set(STACK_REASONS) <= names, sorted(set(STACK_REASONS) - names)


@pytest.fixture
def receivers() -> Iterator[dict[str, tuple[DropReasonReceiver, TestHost, CollectingConsumer]]]:
    started: dict[str, tuple[DropReasonReceiver, TestHost, CollectingConsumer]] = {}
    try:
        for mode in ("separate", "as_drops"):
            host, consumer = TestHost(), CollectingConsumer()
            config = DropReasonConfig(interval=3600, stack_discards=mode)  # type: ignore[arg-type]
            rcv = FACTORY.create(CreateSettings("dropreason", "receiver"), config, consumer)
            assert isinstance(rcv, DropReasonReceiver)
            rcv.start(host)
            started[mode] = (rcv, host, consumer)
        yield started
    finally:
        for rcv, _host, _consumer in started.values():
            rcv.shutdown()


def _abort_on_data(client: Pod, server: Pod, port: int) -> None:
    """CONNECTIONS times: the server accepts and closes at once; the client, after the FIN, sends data,
    which the server's kernel discards (TCP_ABORT_ON_DATA) and answers with RST."""
    ready = threading.Event()

    def serve() -> None:
        with server.entered(), socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((server.ipv4, port))
            listener.listen(CONNECTIONS)
            ready.set()
            for _ in range(CONNECTIONS):
                conn, _ = listener.accept()
                conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    assert ready.wait(10)
    with client.entered():
        for _ in range(CONNECTIONS):
            with socket.create_connection((server.ipv4, port), timeout=5) as c:
                assert c.recv(16) == b""  # the server's FIN
                c.sendall(b"x" * 100)
                time.sleep(0.05)  # the RST comes back
    thread.join(timeout=10)


def _metric(host: TestHost, name: str, labels: tuple[str, str]) -> float:
    family = host.metrics.get(name)
    value = family.value(labels) if family is not None else None
    return float(value) if isinstance(value, float) else 0.0


def _ours(consumer: CollectingConsumer, client: Pod, server: Pod, port: int, reason: str) -> int:
    rows = consumer.records()
    sel = (
        (rows["src_ip"] == np.void(ip_to_bytes(client.ipv4)))
        & (rows["dst_ip"] == np.void(ip_to_bytes(server.ipv4)))
        & (rows["dst_port"] == port)
        & (rows["drop_reason"] == STRINGS.intern(reason))
    )
    return int(rows["packets"][sel].sum())


@pytest.mark.kernel
def test_network_drops_and_stack_discards(
    sandbox: Sandbox, receivers: dict[str, tuple[DropReasonReceiver, TestHost, CollectingConsumer]]
) -> None:
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    _nft(b, "input", "udp dport 7401 drop")
    _send_udp(a, b.ipv4, 7401, UDP)
    _abort_on_data(a, b, 7402)
    for rcv, _host, _consumer in receivers.values():
        rcv.flush()

    rcv, host, consumer = receivers["separate"]
    assert _ours(consumer, a, b, 7401, "NETFILTER_DROP") == UDP  # a network drop, exact
    assert _ours(consumer, a, b, 7402, "TCP_ABORT_ON_DATA") == 0  # no dropped-flow record
    assert _metric(host, "networkobservability_drop_count", ("TCP_ABORT_ON_DATA", "ingress")) == 0
    assert _metric(host, "networkobservability_drop_count", ("NETFILTER_DROP", "ingress")) >= UDP
    stack = _metric(host, "networkobservability_stack_discard_count", ("TCP_ABORT_ON_DATA", "ingress"))
    assert stack >= CONNECTIONS  # the node's, ours included
    assert _metric(host, "networkobservability_stack_discard_count", ("NETFILTER_DROP", "ingress")) == 0

    rcv, host, consumer = receivers["as_drops"]
    assert _ours(consumer, a, b, 7401, "NETFILTER_DROP") == UDP
    assert _ours(consumer, a, b, 7402, "TCP_ABORT_ON_DATA") == CONNECTIONS  # one data segment each, exact
    assert _metric(host, "networkobservability_drop_count", ("TCP_ABORT_ON_DATA", "ingress")) >= CONNECTIONS
    assert host.metrics.get("networkobservability_stack_discard_count") is None


def test_the_list_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "receivers" / "dropreason.md").read_text()
    documented = re.findall(r"^  \| `([A-Z0-9_]+)` \| (.+) \|$", doc, re.M)
    assert documented == list(STACK_REASONS.items())
