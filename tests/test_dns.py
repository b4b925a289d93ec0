"""dns: a real dnsmasq in a pod answers A, AAAA and NXDOMAIN over UDP and TCP, IPv4 and IPv6, ports 53
and 5353; the receiver's counts, rcodes, answers and latencies must match exactly what the client saw."""

from __future__ import annotations

import subprocess
import time

import dns.message
import dns.query
import dns.rcode
import pytest
from pydantic import ValidationError

from retina_otel.component import CreateSettings
from retina_otel.flows import Event, ip_to_bytes
from retina_otel.receivers.dns import FACTORY, DnsConfig, DnsReceiver
from retina_otel.registry import get_factory
from retina_otel.sandbox import Pod
from retina_otel.testing import CollectingConsumer, TestHost, wait_for

A_ANSWER = "198.18.250.53"
AAAA_ANSWER = "2001:db8:53::53"


def test_config_and_factory() -> None:
    cfg = DnsConfig()
    assert cfg.interfaces == () and cfg.query_timeout == 5.0 and cfg.max_pending == 65536
    with pytest.raises(ValidationError):
        DnsConfig(max_pending=1)
    with pytest.raises(ValidationError):
        DnsConfig.model_validate({"bogus": 1})
    assert get_factory("receiver", "dns") is FACTORY
    rcv = FACTORY.create(CreateSettings("dns", "receiver"), cfg, None)
    assert isinstance(rcv, DnsReceiver) and rcv.flush() is None
    rcv.shutdown()
    rcv.shutdown()


def start_dnsmasq(pod: Pod, port: int) -> subprocess.Popen[bytes]:
    assert pod.ipv6
    proc = pod.popen(
        [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
            f"--port={port}", f"--listen-address={pod.ipv4}", f"--listen-address={pod.ipv6}",
            "--bind-interfaces", "--user=root",
            f"--address=/example.test/{A_ANSWER}", f"--address=/example.test/{AAAA_ANSWER}",
            "--local=/nx.test/",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    probe = dns.message.make_query("ready.example.test", "A")

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else proc.returncode)
        try:
            with pod.entered():
                dns.query.udp(probe, pod.ipv4, port=port, timeout=0.3)
            return True
        except (dns.exception.Timeout, OSError):
            return False

    assert wait_for(ready, timeout=10)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=5)


# (name, type, expected rcode, expected answers)
QUERIES = [
    ("www.example.test.", "A", "NOERROR", [A_ANSWER]),
    ("www.example.test.", "AAAA", "NOERROR", [AAAA_ANSWER]),
    ("missing.nx.test.", "A", "NXDOMAIN", []),
]


def run_queries(client: Pod, server: Pod, port: int, repeat: int) -> list[dict[str, object]]:
    """Every query over UDP and TCP, to the server's IPv4 and IPv6 address; what the client saw."""
    assert server.ipv6
    seen: list[dict[str, object]] = []
    with client.entered():
        for _ in range(repeat):
            for address in (server.ipv4, server.ipv6):
                for transport in ("udp", "tcp"):
                    for name, rdtype, rcode, answers in QUERIES:
                        q = dns.message.make_query(name, rdtype)
                        t0 = time.time_ns()
                        send = dns.query.udp if transport == "udp" else dns.query.tcp
                        r = send(q, address, port=port, timeout=3)
                        t1 = time.time_ns()
                        assert dns.rcode.to_text(r.rcode()) == rcode
                        got = [rd.to_text() for rrset in r.answer for rd in rrset]
                        assert got == answers
                        seen.append(
                            {"id": q.id, "name": name, "type": rdtype, "rcode": rcode, "answers": answers,
                             "t0": t0, "t1": t1, "tcp": transport == "tcp", "server": address}
                        )  # fmt: skip
    return seen


def _start(cfg: DnsConfig) -> tuple[DnsReceiver, TestHost, CollectingConsumer]:
    host, consumer = TestHost(), CollectingConsumer()
    rcv = FACTORY.create(CreateSettings("dns", "receiver"), cfg, consumer)
    assert isinstance(rcv, DnsReceiver)
    rcv.start(host)
    return rcv, host, consumer


def _counter(host: TestHost, name: str) -> float:
    family = host.metrics.get(name)
    assert family is not None
    value = family.value(())
    return float(value) if isinstance(value, float) else 0.0


def _check_rows(consumer: CollectingConsumer, client: Pod, seen: list[dict[str, object]], port: int) -> None:
    batches = consumer.batches
    records = consumer.records()
    extras = [e for b in batches for e in (b.dns or [None] * len(b))]
    cli = {ip_to_bytes(client.ipv4), ip_to_bytes(client.ipv6 or "::")}
    queries = [i for i, r in enumerate(records) if r["src_ip"].tobytes() in cli and r["dst_port"] == port]
    responses = [i for i, r in enumerate(records) if r["dst_ip"].tobytes() in cli and r["src_port"] == port]
    assert len(queries) == len(seen) and len(responses) == len(seen)
    # Ids are random 16-bit numbers: a UDP and a TCP query may share one, so match on the transport too.
    by_id = {(int(records[i]["dns_id"]), int(records[i]["proto"])): i for i in responses}
    for s in seen:
        i = by_id[(int(s["id"]), 6 if s["tcp"] else 17)]  # type: ignore[call-overload]
        row, extra = records[i], extras[i]
        assert extra is not None
        assert int(row["event"]) == Event.DNS and int(row["dns_is_response"]) == 1
        assert int(row["proto"]) == (6 if s["tcp"] else 17)
        assert extra["query"] == s["name"] and extra["query_type"] == s["type"]
        assert extra["return_code"] == s["rcode"] and extra["answers"] == s["answers"]
        assert int(row["dns_answer_count"]) == len(s["answers"])  # type: ignore[arg-type]
        latency_ns = int(row["dns_latency_us"]) * 1000
        assert 0 < latency_ns <= int(s["t1"]) - int(s["t0"]), (s, row.tolist())  # type: ignore[call-overload]
        assert int(s["t0"]) <= int(row["time_start_ns"]) <= int(s["t1"])  # type: ignore[call-overload]


def flush_until_answered(receiver: DnsReceiver, host: TestHost, n: int) -> None:
    """Flush until ``n`` responses are counted, once more, and then both counts must be exactly ``n``."""

    def complete() -> bool:
        receiver.flush()
        return _counter(host, "networkobservability_dns_response_count") >= n

    assert wait_for(complete, timeout=10)
    receiver.flush()
    assert _counter(host, "networkobservability_dns_request_count") == n
    assert _counter(host, "networkobservability_dns_response_count") == n


def check_latencies_and_no_loss(host: TestHost, n: int) -> None:
    """``n`` latencies in the histogram, and no lost event of any kind (nothing unparsable either)."""
    latency = host.metrics.get("networkobservability_dns_response_latency_ms")
    assert latency is not None
    hist = latency.value(())
    assert hist is not None and not isinstance(hist, float) and hist.count == n
    lost = host.metrics.get("controlplane_networkobservability_lost_events_counter")
    assert lost is not None and len(lost) == 0


@pytest.mark.kernel
@pytest.mark.parametrize("source", ["socket", "tc"])
@pytest.mark.parametrize("port", [53, 5353])
def test_dnsmasq_counts_rcodes_answers_latency(client_server: tuple[Pod, Pod], port: int, source: str) -> None:
    """Alone in the agent: `socket`, or `tc` with the receiver's own programs on the veths."""
    client, server = client_server
    proc = start_dnsmasq(server, port)
    interfaces = (client.host_veth, server.host_veth)
    rcv, host, consumer = _start(DnsConfig(interval=3600, interfaces=interfaces, source=source))  # type: ignore[arg-type]
    try:
        assert rcv.source == source
        seen = run_queries(client, server, port, repeat=2)
        n = len(seen)
        assert n == 2 * 2 * 2 * 3

        # Only the two pods' veths are watched, and nothing else speaks DNS there: the counts are exact.
        flush_until_answered(rcv, host, n)
        _check_rows(consumer, client, seen, port)
        check_latencies_and_no_loss(host, n)
    finally:
        rcv.shutdown()
        stop(proc)


@pytest.mark.kernel
@pytest.mark.parametrize("source", ["socket", "auto"])
def test_all_interfaces_counts_each_message_once(client_server: tuple[Pod, Pod], source: str) -> None:
    """Unbound, every query is seen twice (in on the client's veth, out on the server's): only the copy
    leaving the client counts. `auto` alone in the agent attaches its own TC programs."""
    client, server = client_server
    proc = start_dnsmasq(server, 53)
    rcv, _host, consumer = _start(DnsConfig(interval=3600, source=source))  # type: ignore[arg-type]
    try:
        assert rcv.source == ("socket" if source == "socket" else "tc")
        seen = run_queries(client, server, 53, repeat=1)

        def complete() -> bool:
            rcv.flush()
            cli = {ip_to_bytes(client.ipv4), ip_to_bytes(client.ipv6 or "::")}
            return sum(r["dst_ip"].tobytes() in cli for r in consumer.records()) >= len(seen)

        assert wait_for(complete, timeout=10)
        time.sleep(0.2)
        rcv.flush()
        _check_rows(consumer, client, seen, 53)
    finally:
        rcv.shutdown()
        stop(proc)
