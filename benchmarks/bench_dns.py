"""dns receiver at thousands of queries per second, against a real dnsmasq, side by side with no receiver.

Pod b runs dnsmasq (answers ``*.example.test`` locally). A paced sender in pod a (a subprocess, so the
benchmark process's CPU time is the receiver's) sends A queries over UDP at a target rate for a fixed
time and counts the responses it gets. With the receiver attached (watching both pods' veths) the rows
show what it counted against what was sent and answered, the events it reports lost (socket buffer
overflow, unanswered, unparsable), the matched latencies and its CPU use.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from typing import Any

from retina_otel.component import CreateSettings
from retina_otel.receivers.dns import DnsConfig, DnsReceiver
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import TestHost, wait_for

SENDER = """
import socket, struct, sys, time
server, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.setblocking(False)
def query(i):
    name = b"".join(bytes([len(p)]) + p for p in (b"q%d" % i, b"example", b"test")) + b"\\0"
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\\0\\1\\0\\1"
sent = got = 0
start = time.monotonic(); end = start + seconds
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - start) * rate)
    while sent < due:
        s.sendto(query(sent), (server, 53)); sent += 1
    try:
        while True:
            s.recv(2048); got += 1
    except BlockingIOError:
        pass
    time.sleep(0.0005)
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    try:
        s.recv(2048); got += 1
    except BlockingIOError:
        time.sleep(0.005)
print(sent, got)
"""


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _round(a: Pod, b: Pod, rate: int, seconds: float, with_receiver: bool) -> dict[str, Any]:
    host = TestHost()
    cfg = DnsConfig(interval=1, interfaces=(a.host_veth, b.host_veth))
    rcv = DnsReceiver(CreateSettings("dns", "receiver"), cfg, None)
    try:
        if with_receiver:
            rcv.start(host)
        cpu0, t0 = _cpu(), time.monotonic()
        out = a.run(
            [sys.executable, "-c", SENDER, b.ipv4, str(rate), str(seconds)], timeout=seconds + 60
        ).stdout
        sent, answered = (int(x) for x in out.split())
        if with_receiver:
            resp = host.metrics.counter("networkobservability_dns_response_count", "")

            def done() -> bool:
                rcv.flush()
                value = resp.value(())
                return isinstance(value, float) and value >= answered

            wait_for(done, timeout=5)
        cpu = _cpu() - cpu0
        wall = time.monotonic() - t0
    finally:
        rcv.shutdown()
    row: dict[str, Any] = {
        "rate_target": rate,
        "receiver": with_receiver,
        "sent": sent,
        "answered": answered,
        "answered_qps": round(answered / seconds),
    }
    if with_receiver:
        req = host.metrics.counter("networkobservability_dns_request_count", "").value(())
        res = host.metrics.counter("networkobservability_dns_response_count", "").value(())
        lat = host.metrics.get("networkobservability_dns_response_latency_ms")
        hist = lat.value(()) if lat else None
        lost_family = host.metrics.get("controlplane_networkobservability_lost_events_counter")
        lost = {k[1]: int(v) for k, v, _ in lost_family.snapshot().series} if lost_family else {}  # type: ignore[arg-type]
        row.update(
            counted_requests=int(req) if isinstance(req, float) else 0,
            counted_responses=int(res) if isinstance(res, float) else 0,
            matched_latencies=getattr(hist, "count", 0),
            mean_latency_ms=round(hist.total / hist.count, 3)
            if hist is not None and getattr(hist, "count", 0)
            else "-",  # type: ignore[union-attr]
            lost=lost or "-",
            receiver_cpu_pct=round(100 * cpu / wall, 1),
            exact=(int(req or 0) == sent and int(res or 0) == answered),  # type: ignore[arg-type]
        )
    return row


def run(quick: bool) -> dict[str, Any]:
    seconds = 2.0 if quick else 5.0
    rates = [2000, 5000] if quick else [2000, 5000, 10000, 20000]
    rows: list[dict[str, Any]] = []
    with Sandbox() as sb:
        a, b = sb.add_pod("a"), sb.add_pod("b")
        a.run(["ping", "-c1", "-W2", b.ipv4], check=False)
        b.popen(
            ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
             "--port=53", f"--listen-address={b.ipv4}", "--bind-interfaces", "--user=root",
             "--address=/example.test/198.18.250.53", "--dns-forward-max=10000", "--cache-size=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        for rate in rates:
            for on in (False, True):
                rows.append(_round(a, b, rate, seconds, on))
    with_rows = [r for r in rows if r["receiver"]]
    return {
        "rows": rows,
        "targets": {
            "exact_at_all_rates": all(r["exact"] for r in with_rows),
            "max_answered_qps_counted_exactly": max(
                (r["answered_qps"] for r in with_rows if r["exact"]), default=0
            ),
        },
        "notes": (
            "UDP A queries from pod a to dnsmasq in pod b at a paced rate; 'answered' is what the sender got "
            "back (ground truth for responses), 'sent' for requests. receiver_cpu_pct is the benchmark "
            "process's CPU (the receiver's reader thread and publishing) over the round's wall time. "
            "Losses the receiver knows of are reported by reason, never hidden."
        ),
    }
