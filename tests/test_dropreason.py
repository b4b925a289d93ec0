"""dropreason: exact drop counts with the kernel's own reasons, from real traffic between sandbox pods."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from retina_otel.bpf.btf import BtfError, kernel_btf, require_tracepoint_args
from retina_otel.component import CreateSettings
from retina_otel.flows import STRINGS, Direction, Event, Verdict, ip_to_bytes
from retina_otel.receivers.dropreason import FACTORY, DropReasonConfig, DropReasonReceiver
from retina_otel.receivers.dropreason.reasons import parse_print_symbolic, resolve_reasons
from retina_otel.receivers.dropreason.receiver import KFREE_SKB_ARGS
from retina_otel.registry import get_factory
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost, wait_for

PAYLOAD = b"d" * 32

# -- no kernel ----------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = DropReasonConfig()
    assert cfg.interval == 10.0 and cfg.max_flows == 16384 and cfg.exclude_reasons == ()
    with pytest.raises(ValidationError):
        DropReasonConfig(interval=0)
    with pytest.raises(ValidationError):
        DropReasonConfig.model_validate({"bogus": 1})
    with pytest.raises(ValidationError):
        cfg.interval = 5  # type: ignore[misc]


def test_factory_registered_and_constructor_does_no_io() -> None:
    assert get_factory("receiver", "dropreason") is FACTORY
    receiver = FACTORY.create(CreateSettings("dropreason", "receiver"), DropReasonConfig(), None)
    assert isinstance(receiver, DropReasonReceiver)
    assert receiver.flush() is None
    receiver.shutdown()
    receiver.shutdown()


def test_parse_print_symbolic() -> None:
    text = (
        'print fmt: "reason: %s", REC->skbaddr, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, '
        '{ 3, "NO_SOCKET" }, { 77, "NETFILTER_DROP" }, { 90, "MAX" })'
    )
    assert parse_print_symbolic(text) == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 77: "NETFILTER_DROP", 90: "MAX"}
    assert parse_print_symbolic("print fmt: nothing") == {}


def test_reasons_from_a_format_file_without_btf(tmp_path: Path) -> None:
    fmt = tmp_path / "format"
    fmt.write_text('__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 5, "NO_SOCKET" }, { 9, "MAX" })')
    reasons = resolve_reasons([fmt], use_btf=False)
    assert reasons.source == "tracefs"
    assert reasons.names == {2: "NOT_SPECIFIED", 5: "NO_SOCKET"}
    assert reasons.not_drops == frozenset({0, 1})  # below the first named value
    assert reasons.name(5) == "NO_SOCKET" and reasons.name(7) == "UNKNOWN_7"
    assert reasons.name((3 << 16) | 4) == "SUBSYS_3_4"


def test_reasons_of_the_running_kernel() -> None:
    reasons = resolve_reasons()
    names = set(reasons.names.values())
    assert {"NOT_SPECIFIED", "NO_SOCKET", "NETFILTER_DROP"} <= names
    assert "CONSUMED" not in names and "NOT_DROPPED_YET" not in names and "MAX" not in names
    assert reasons.not_drops  # SKB_NOT_DROPPED_YET and SKB_CONSUMED from BTF


# -- kernel ---------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[DropReasonReceiver, TestHost, CollectingConsumer]]:
    host, consumer = TestHost(), CollectingConsumer()
    rcv = FACTORY.create(CreateSettings("dropreason", "receiver"), DropReasonConfig(interval=3600), consumer)
    assert isinstance(rcv, DropReasonReceiver)
    try:
        rcv.start(host)
        yield rcv, host, consumer
    finally:
        rcv.shutdown()


def _send_udp(src: Pod, dst_ip: str, port: int, n: int) -> None:
    family = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    with src.entered(), socket.socket(family, socket.SOCK_DGRAM) as s:
        for _ in range(n):
            with contextlib.suppress(PermissionError):  # EPERM: an output rule dropped it
                s.sendto(PAYLOAD, (dst_ip, port))


def _rows(consumer: CollectingConsumer, src: str, dst: str, dport: int) -> np.ndarray:
    r = consumer.records()
    sel = (r["src_ip"] == np.void(ip_to_bytes(src))) & (r["dst_ip"] == np.void(ip_to_bytes(dst)))
    return r[sel & (r["dst_port"] == dport)]


def _wait_rows(
    rcv: DropReasonReceiver, consumer: CollectingConsumer, src: str, dst: str, dport: int, n: int
) -> np.ndarray:
    def enough() -> bool:
        rcv.flush()
        return int(_rows(consumer, src, dst, dport)["packets"].sum()) >= n

    assert wait_for(enough, timeout=10), _rows(consumer, src, dst, dport)
    rcv.flush()
    return _rows(consumer, src, dst, dport)


def _nft(pod: Pod, hook: str, rule: str) -> None:
    """A drop rule in the pod's namespace (the namespace, and the table with it, go with the sandbox)."""
    ruleset = (
        f"table inet rotel_drop {{\n chain {hook} {{\n type filter hook {hook} priority 0\n {rule}\n }}\n}}\n"
    )
    proc = subprocess.run(
        pod.exec_args(["nft", "-f", "-"]), input=ruleset, text=True, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def _check(rows: np.ndarray, n: int, reason: str, direction: Direction, ip_bytes: int) -> None:
    assert int(rows["packets"].sum()) == n
    assert int(rows["bytes"].sum()) == n * ip_bytes
    assert {STRINGS.name(int(x)) for x in rows["drop_reason"]} == {reason}
    assert set(rows["direction"].tolist()) == {int(direction)}
    assert set(rows["event"].tolist()) == {int(Event.DROP)}
    assert set(rows["verdict"].tolist()) == {int(Verdict.DROPPED)}
    assert set(rows["proto"].tolist()) == {17}
    assert (rows["time_end_ns"] >= rows["time_start_ns"]).all()


def _metric(host: TestHost, name: str, labels: tuple[str, str]) -> float:
    family = host.metrics.get(name)
    assert family is not None
    value = family.value(labels)
    return float(value) if isinstance(value, float) else 0.0


@pytest.mark.kernel
def test_netfilter_drops_ingress_and_egress_v4_v6(
    sandbox: Sandbox, receiver: tuple[DropReasonReceiver, TestHost, CollectingConsumer]
) -> None:
    rcv, host, consumer = receiver
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    assert a.ipv6 and b.ipv6
    # b drops UDP to 7001 on input (received: ingress); a drops UDP to 7002 on output (sent: egress).
    _nft(b, "input", "udp dport 7001 drop")
    _nft(a, "output", "udp dport 7002 drop")
    n = 37
    _send_udp(a, b.ipv4, 7001, n)
    _send_udp(a, b.ipv6, 7001, n + 1)
    _send_udp(a, b.ipv4, 7002, n + 2)
    _send_udp(a, b.ipv6, 7002, n + 3)
    ip4, ip6 = 20 + 8 + len(PAYLOAD), 40 + 8 + len(PAYLOAD)
    _check(_wait_rows(rcv, consumer, a.ipv4, b.ipv4, 7001, n), n, "NETFILTER_DROP", Direction.INGRESS, ip4)
    _check(
        _wait_rows(rcv, consumer, a.ipv6, b.ipv6, 7001, n + 1),
        n + 1,
        "NETFILTER_DROP",
        Direction.INGRESS,
        ip6,
    )
    _check(
        _wait_rows(rcv, consumer, a.ipv4, b.ipv4, 7002, n + 2), n + 2, "NETFILTER_DROP", Direction.EGRESS, ip4
    )
    _check(
        _wait_rows(rcv, consumer, a.ipv6, b.ipv6, 7002, n + 3), n + 3, "NETFILTER_DROP", Direction.EGRESS, ip6
    )
    v4 = _rows(consumer, a.ipv4, b.ipv4, 7001)
    assert set(v4["ip_version"].tolist()) == {4}
    assert int(v4["ifindex"][0]) > 0
    # The metrics count every drop on the node (other namespaces too): they equal the sum of all rows.
    all_rows = consumer.records()
    nf = STRINGS.intern("NETFILTER_DROP")
    for direction, label in ((Direction.INGRESS, "ingress"), (Direction.EGRESS, "egress")):
        sel = all_rows[(all_rows["drop_reason"] == nf) & (all_rows["direction"] == direction)]
        assert (
            _metric(host, "networkobservability_drop_count", ("NETFILTER_DROP", label))
            == sel["packets"].sum()
        )
        assert (
            _metric(host, "networkobservability_drop_bytes", ("NETFILTER_DROP", label)) == sel["bytes"].sum()
        )
    assert host.metrics.get("controlplane_networkobservability_lost_events_counter") is not None


@pytest.mark.kernel
def test_udp_to_closed_port_is_no_socket(
    sandbox: Sandbox, receiver: tuple[DropReasonReceiver, TestHost, CollectingConsumer]
) -> None:
    rcv, host, consumer = receiver
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    assert a.ipv6 and b.ipv6
    n = 23
    _send_udp(a, b.ipv4, 7003, n)
    _send_udp(a, b.ipv6, 7003, n)
    _check(_wait_rows(rcv, consumer, a.ipv4, b.ipv4, 7003, n), n, "NO_SOCKET", Direction.INGRESS, 20 + 8 + 32)
    _check(_wait_rows(rcv, consumer, a.ipv6, b.ipv6, 7003, n), n, "NO_SOCKET", Direction.INGRESS, 40 + 8 + 32)
    assert _metric(host, "networkobservability_drop_count", ("NO_SOCKET", "ingress")) >= 2 * n


@pytest.mark.kernel
def test_excluded_reason_is_not_counted(sandbox: Sandbox) -> None:
    host, consumer = TestHost(), CollectingConsumer()
    cfg = DropReasonConfig(interval=3600, exclude_reasons=("NO_SOCKET",))
    rcv = FACTORY.create(CreateSettings("dropreason", "receiver"), cfg, consumer)
    assert isinstance(rcv, DropReasonReceiver)
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    _nft(b, "input", "udp dport 7001 drop")
    try:
        rcv.start(host)
        _send_udp(a, b.ipv4, 7003, 5)  # NO_SOCKET: excluded
        _send_udp(a, b.ipv4, 7001, 5)  # NETFILTER_DROP: counted, and sent after, so it marks "done"
        _wait_rows(rcv, consumer, a.ipv4, b.ipv4, 7001, 5)
        assert len(_rows(consumer, a.ipv4, b.ipv4, 7003)) == 0
    finally:
        rcv.shutdown()


@pytest.mark.kernel
def test_shutdown_publishes_what_the_kernel_counted_since_the_last_drain(
    sandbox: Sandbox, receiver: tuple[DropReasonReceiver, TestHost, CollectingConsumer]
) -> None:
    rcv, host, consumer = receiver
    a, b = sandbox.add_pod("a"), sandbox.add_pod("b")
    _nft(b, "input", "udp dport 7009 drop")
    n = 23
    _send_udp(a, b.ipv4, 7009, n)
    rcv.shutdown()  # no flush() before: the interval (1 h) never came
    rows = _rows(consumer, a.ipv4, b.ipv4, 7009)
    assert int(rows["packets"].sum()) == n
    assert _metric(host, "networkobservability_drop_count", ("NETFILTER_DROP", "ingress")) >= n


@pytest.mark.kernel
def test_hooks_the_kfree_skb_raw_tracepoint_checked_against_btf(
    receiver: tuple[DropReasonReceiver, TestHost, CollectingConsumer],
) -> None:
    rcv, _, _ = receiver
    bpf = rcv._bpf
    assert set(bpf.raw_tracepoint_fds) == {b"kfree_skb"} and not bpf.tracepoint_fds  # no trace record built
    btf = kernel_btf()
    assert btf.tracepoint_args("kfree_skb")[:3] == KFREE_SKB_ARGS  # (skb, location, reason[, rx_sk])
    require_tracepoint_args(btf, "kfree_skb", KFREE_SKB_ARGS)
    with pytest.raises(BtfError, match="kfree_skb has arguments"):
        require_tracepoint_args(btf, "kfree_skb", ["struct sk_buff *", "enum skb_drop_reason"])
    with pytest.raises(BtfError, match="no_such_tracepoint"):
        btf.tracepoint_args("no_such_tracepoint")
