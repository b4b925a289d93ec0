"""dropreason and tcpretrans under load, each side by side with the same traffic and no receiver.

Drop path: pod a floods 64-byte UDP datagrams at pod b for a fixed time; an nftables rule in b's input
hook drops (and counts) every one of them, so each is a kfree_skb with reason NETFILTER_DROP. The sender
is a tight loop in a subprocess in pod a; on a veth path the sender's CPU also runs the receive side up to
the drop, so the drop-path cost (the tracepoint program) shows as fewer packets per second. Exactness:
the receiver's NETFILTER_DROP count for the flow must equal nft's counter.

Retransmit path: a 40 MB TCP transfer a -> b with an nft rule in b dropping 10% of the segments; the
transfer time is compared with and without the receiver, and the receiver's retransmitted segments for
the flow are compared with the sender namespace's TcpRetransSegs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from retina_otel.component import CreateSettings
from retina_otel.flows import STRINGS, ip_to_bytes
from retina_otel.receivers.dropreason import DropReasonConfig, DropReasonReceiver
from retina_otel.receivers.tcpretrans import TcpRetransConfig, TcpRetransReceiver
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import CollectingConsumer, TestHost

FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
addr = (sys.argv[1], 9000); payload = b"x" * 64; n = 0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for _ in range(1000):
        s.sendto(payload, addr)
    n += 1000
print(n)
"""

TRANSFER = """
import socket, sys, time
size = int(sys.argv[2]); chunk = b"x" * 65536
s = socket.create_connection((sys.argv[1], 9100)); t = time.monotonic(); sent = 0
while sent < size:
    sent += s.send(chunk[: min(65536, size - sent)])
s.shutdown(socket.SHUT_WR); s.recv(1); print(time.monotonic() - t)
"""

SINK = """
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind((sys.argv[1], 9100)); l.listen(8)
print("ready", flush=True)
while True:
    c, _ = l.accept()
    while c.recv(1 << 20):
        pass
    c.send(b"k"); c.close()
"""


def _nft(pod: Pod, rules: str) -> None:
    subprocess.run(pod.exec_args(["nft", "-f", "-"]), input=rules, text=True, check=True)


def _nft_counter(pod: Pod, table: str) -> int:
    out = pod.run(["nft", "list", "table", "inet", table]).stdout
    for token_line in out.splitlines():
        if "counter packets" in token_line:
            parts = token_line.split()
            return int(parts[parts.index("packets") + 1])
    raise RuntimeError(out)


def _retrans_segs(pod: Pod) -> int:
    for line in pod.run(["nstat", "-asz", "TcpRetransSegs"]).stdout.splitlines():
        if line.startswith("TcpRetransSegs"):
            return int(line.split()[1])
    return 0


def _drop_round(a: Pod, b: Pod, seconds: float, with_receiver: bool) -> dict[str, Any]:
    b.run(["nft", "flush", "table", "inet", "rotelbench"], check=False)
    b.run(["nft", "delete", "table", "inet", "rotelbench"], check=False)
    _nft(b, "table inet rotelbench {\n chain input {\n  type filter hook input priority 0\n"
         "  udp dport 9000 counter drop\n }\n}\n")  # fmt: skip
    host, consumer = TestHost(), CollectingConsumer()
    rcv = DropReasonReceiver(CreateSettings("dropreason", "receiver"), DropReasonConfig(interval=1), consumer)
    drain_s = 0.0
    try:
        if with_receiver:
            rcv.start(host)
        sent = int(a.run([sys.executable, "-c", FLOOD, b.ipv4, str(seconds)], timeout=seconds + 30).stdout)
        time.sleep(0.5)
        t = time.perf_counter()
        rcv.flush()
        drain_s = time.perf_counter() - t
    finally:
        rcv.shutdown()
    nft = _nft_counter(b, "rotelbench")
    counted = 0
    if with_receiver:
        r = consumer.records()
        sel = (r["src_ip"] == np.void(ip_to_bytes(a.ipv4))) & (r["dst_port"] == 9000)
        sel &= r["drop_reason"] == STRINGS.intern("NETFILTER_DROP")
        counted = int(r[sel]["packets"].sum())
    lost = host.metrics.get("controlplane_networkobservability_lost_events_counter")
    return {
        "path": "drop",
        "receiver": with_receiver,
        "pps": round(sent / seconds),
        "nft_dropped": nft,
        "receiver_counted": counted if with_receiver else "-",
        "exact": (counted == nft) if with_receiver else "-",
        "lost_events": sum(float(v) for _, v, _ in lost.snapshot().series) if lost else 0,  # type: ignore[arg-type]
        "last_drain_ms": round(drain_s * 1000, 2) if with_receiver else "-",
    }


def _retrans_round(a: Pod, b: Pod, size: int, with_receiver: bool) -> dict[str, Any]:
    host, consumer = TestHost(), CollectingConsumer()
    rcv = TcpRetransReceiver(CreateSettings("tcpretrans", "receiver"), TcpRetransConfig(interval=1), consumer)
    try:
        if with_receiver:
            rcv.start(host)
        before = _retrans_segs(a)
        seconds = float(a.run([sys.executable, "-c", TRANSFER, b.ipv4, str(size)], timeout=300).stdout)
        time.sleep(0.3)
        rcv.flush()
        kernel = _retrans_segs(a) - before
    finally:
        rcv.shutdown()
    counted = 0
    if with_receiver:
        r = consumer.records()
        counted = int(r[r["src_ip"] == np.void(ip_to_bytes(a.ipv4))]["retransmits"].sum())
    return {
        "path": "retransmit",
        "receiver": with_receiver,
        "mbit_s": round(size * 8 / seconds / 1e6, 1),
        "kernel_retrans_segs": kernel,
        "receiver_counted": counted if with_receiver else "-",
        "exact": (counted == kernel) if with_receiver else "-",
    }


def run(quick: bool) -> dict[str, Any]:
    seconds = 2.0 if quick else 5.0
    rounds = 1 if quick else 3
    size = (10 if quick else 40) << 20
    rows: list[dict[str, Any]] = []
    with Sandbox() as sb:
        a, b = sb.add_pod("a"), sb.add_pod("b")
        a.run(["ping", "-c1", "-W2", b.ipv4], check=False)
        drop_rows: list[dict[str, Any]] = []
        for _ in range(rounds):
            for on in (False, True):
                drop_rows.append(_drop_round(a, b, seconds, on))
        b.run(["nft", "delete", "table", "inet", "rotelbench"], check=False)
        sink = b.popen([sys.executable, "-c", SINK, b.ipv4], stdout=subprocess.PIPE)
        assert sink.stdout is not None and sink.stdout.readline().startswith(b"ready")
        _nft(b, "table inet rotelloss {\n chain input {\n  type filter hook input priority 0\n"
             "  tcp dport 9100 numgen random mod 10 < 1 drop\n }\n}\n")  # fmt: skip
        retrans_rows: list[dict[str, Any]] = []
        for _ in range(rounds):
            for on in (False, True):
                retrans_rows.append(_retrans_round(a, b, size, on))
        rows = drop_rows + retrans_rows

    def median(path: str, on: bool, key: str) -> float:
        return statistics.median(float(r[key]) for r in rows if r["path"] == path and r["receiver"] is on)

    pps_off, pps_on = median("drop", False, "pps"), median("drop", True, "pps")
    mb_off, mb_on = median("retransmit", False, "mbit_s"), median("retransmit", True, "mbit_s")
    return {
        "rows": rows,
        "targets": {
            "drop_path_pps_ratio_with_receiver": round(pps_on / pps_off, 3),
            "retransmit_path_throughput_ratio_with_receiver": round(mb_on / mb_off, 3),
            "all_counts_exact": all(r["exact"] is True for r in rows if r["receiver"]),
        },
        "notes": (
            "Drop path: UDP flood from pod a into an nft drop rule in pod b (every packet a NETFILTER_DROP "
            "kfree_skb); pps is the sender's rate, which on a veth path includes the receive side up to the "
            "drop. Retransmit path: TCP transfer with 10% of segments dropped in b's input. Rounds alternate "
            "without/with the receiver; targets compare medians."
        ),
    }
