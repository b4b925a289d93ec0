"""tcpretrans: retransmitted segments per flow equal the kernel's own TcpRetransSegs, under induced loss."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from retina_otel.component import CreateSettings
from retina_otel.flows import Direction, Event, ip_to_bytes
from retina_otel.receivers.tcpretrans import FACTORY, TcpRetransConfig, TcpRetransReceiver
from retina_otel.receivers.tcpretrans.receiver import _cflags
from retina_otel.registry import get_factory
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost, wait_for

PORT = 7100
SIZE = 3 * 1024 * 1024


def test_config_and_factory() -> None:
    cfg = TcpRetransConfig()
    assert cfg.interval == 10.0 and cfg.max_flows == 16384 and cfg.include_synack
    with pytest.raises(ValidationError):
        TcpRetransConfig(max_flows=1)
    with pytest.raises(ValidationError):
        TcpRetransConfig.model_validate({"bogus": 1})
    assert get_factory("receiver", "tcpretrans") is FACTORY
    rcv = FACTORY.create(CreateSettings("tcpretrans", "receiver"), cfg, None)
    assert rcv.flush() is None  # type: ignore[attr-defined]
    rcv.shutdown()
    rcv.shutdown()


def test_cflags_follow_the_tracepoint_format(tmp_path: Path) -> None:
    (tmp_path / "tcp_retransmit_skb").mkdir()
    (tmp_path / "tcp_retransmit_skb" / "format").write_text("field:__u16 family;\n")
    flags = _cflags(TcpRetransConfig(max_flows=64), tmp_path)
    assert "-DMAX_FLOWS=64" in flags and "-DHAVE_ERR" not in flags and "-DHAVE_SYNACK" not in flags
    assert any(f.startswith("-DOFF_SKB_CB=") for f in flags)
    (tmp_path / "tcp_retransmit_skb" / "format").write_text("field:int err;\toffset:76;\n")
    (tmp_path / "tcp_retransmit_synack").mkdir()
    (tmp_path / "tcp_retransmit_synack" / "format").write_text("")
    flags = _cflags(TcpRetransConfig(), tmp_path)
    assert "-DHAVE_ERR" in flags and "-DHAVE_SYNACK" in flags
    assert "-DHAVE_SYNACK" not in _cflags(TcpRetransConfig(include_synack=False), tmp_path)


# -- kernel ---------------------------------------------------------------------------------------


def retrans_segs(pod: Pod) -> int:
    """The namespace's TcpRetransSegs, from nstat (absolute, history untouched)."""
    out = pod.run(["nstat", "-asz", "TcpRetransSegs"]).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "TcpRetransSegs":
            return int(parts[1])
    raise AssertionError(out)


def _nft(pod: Pod, ruleset: str) -> None:
    proc = subprocess.run(pod.exec_args(["nft", "-f", "-"]), input=ruleset, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def _transfer(client: Pod, server: Pod, address: str) -> None:
    """Send SIZE bytes client -> server over TCP; returns when the server has all of them."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with server.entered():
        listener = socket.socket(family, socket.SOCK_STREAM)
    received = [0]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while received[0] < SIZE:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                received[0] += len(chunk)
            conn.sendall(b"k")

    with listener:
        listener.bind((address, PORT))
        listener.listen(1)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with client.entered():
            sock = socket.socket(family, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(60)
            sock.connect((address, PORT))
            sock.sendall(b"x" * SIZE)
            assert sock.recv(1) == b"k"
        thread.join(timeout=60)
    assert received[0] == SIZE


@pytest.fixture
def receiver() -> Iterator[tuple[TcpRetransReceiver, TestHost, CollectingConsumer]]:
    host, consumer = TestHost(), CollectingConsumer()
    rcv = FACTORY.create(CreateSettings("tcpretrans", "receiver"), TcpRetransConfig(interval=3600), consumer)
    assert isinstance(rcv, TcpRetransReceiver)
    try:
        rcv.start(host)
        yield rcv, host, consumer
    finally:
        rcv.shutdown()


@pytest.mark.kernel
def test_retransmissions_equal_the_kernel_counter(
    sandbox: Sandbox, receiver: tuple[TcpRetransReceiver, TestHost, CollectingConsumer]
) -> None:
    rcv, host, consumer = receiver
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    assert a.ipv6 and b.ipv6
    # A fifth of what the sender sends to the server's port is lost on the way in. (A drop in the sender's
    # own output hook fails the send, and TCP simply sends again: no retransmission.)
    _nft(
        b,
        "table inet rotel_loss {\n chain input {\n  type filter hook input priority 0\n"
        f"  tcp dport {PORT} numgen random mod 10 < 2 drop\n }}\n}}\n",
    )
    # Neighbour discovery of fresh veths can fail the first packets (EHOSTUNREACH): warm the paths first.
    for address in (b.ipv4, b.ipv6):
        assert wait_for(lambda addr=address: a.run(["ping", "-c1", "-W1", addr], check=False).returncode == 0)
    before = retrans_segs(a)
    _transfer(a, b, b.ipv4)
    _transfer(a, b, b.ipv6)
    b.run(["nft", "delete", "table", "inet", "rotel_loss"])  # the closing handshakes go through unharmed

    def sender_rows() -> np.ndarray:
        r = consumer.records()
        mine = (r["src_ip"] == np.void(ip_to_bytes(a.ipv4))) | (r["src_ip"] == np.void(ip_to_bytes(a.ipv6)))
        return r[mine]

    def settled() -> bool:
        rcv.flush()
        return int(sender_rows()["retransmits"].sum()) == retrans_segs(a) - before

    assert wait_for(settled, timeout=15), (int(sender_rows()["retransmits"].sum()), retrans_segs(a) - before)
    rows = sender_rows()
    expected = retrans_segs(a) - before
    assert expected > 10, expected  # the loss really happened
    assert int(rows["retransmits"].sum()) == expected
    assert set(rows["ip_version"].tolist()) == {4, 6}
    assert set(rows["dst_port"].tolist()) == {PORT}
    assert set(rows["event"].tolist()) == {int(Event.RETRANSMIT)}
    assert set(rows["direction"].tolist()) == {int(Direction.EGRESS)}
    assert set(rows["proto"].tolist()) == {6}
    total = host.metrics.get("networkobservability_tcpretrans_count")
    assert total is not None
    value = total.value(())
    assert isinstance(value, float)
    # The node total counts every namespace: at least ours, and exactly the sum of all rows.
    assert value >= expected
    assert value == float(consumer.records()["retransmits"].sum())
