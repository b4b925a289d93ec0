"""The floor of per-packet observation (bench_agent's ``floor`` and ``table`` phases), as a helper process.

``floor_observer.py [--table] IFINDEX...`` compiles :file:`floor_observer.bpf.c` (with ``--table``: and
its per-flow table, ``FLOW_TABLE``; bcc, so in its own process: the benchmark process must not map
libLLVM, see ``bench_agent._load_noop``), prints ``ready``, then reads
commands on stdin: ``on`` attaches the program where and how packetparser attaches (ingress and egress of
each interface) and a no-op program on each raw tracepoint the agent runs per packet or connection;
``off`` detaches them. Each command is answered ``ok`` once done. End of input (or a signal) detaches
everything and exits.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

from retina_otel.bpf import load_bpf
from retina_otel.bpf.tc import FilterSpec, make_attacher
from retina_otel.receivers.packetparser.receiver import FILTER_SPEC

SOURCE = Path(__file__).with_name("floor_observer.bpf.c")
TRACEPOINTS = ("kfree_skb", "tcp_probe", "inet_sock_set_state")  # bench_agent.NOOP_TRACEPOINTS


def main(argv: list[str]) -> int:
    from bcc import BPF

    table = "--table" in argv
    ifindexes = [int(arg) for arg in argv if arg != "--table"]
    bpf = load_bpf(SOURCE, [f"-DFLOW_TABLE={int(table)}"])
    prog_fd = int(bpf.load_func("floor_observe", BPF.SCHED_CLS).fd)
    spec = FilterSpec(name="retina_otel_bench_floor", prio=FILTER_SPEC.prio, handle=FILTER_SPEC.handle)
    attacher = make_attacher(spec, "auto")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    attached = False

    def off() -> None:
        nonlocal attached
        for ifindex in ifindexes:
            with contextlib.suppress(Exception):
                attacher.detach(ifindex)
        for name in TRACEPOINTS:
            with contextlib.suppress(Exception):
                bpf.detach_raw_tracepoint(tp=name.encode())
        attached = False

    try:
        print("ready", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "on" and not attached:
                for ifindex in ifindexes:
                    attacher.attach(ifindex, "ingress", prog_fd)
                    attacher.attach(ifindex, "egress", prog_fd)
                for name in TRACEPOINTS:
                    bpf.attach_raw_tracepoint(tp=name.encode(), fn_name=b"floor_tracepoint")
                attached = True
            elif command == "off":
                off()
            print("ok", flush=True)
    finally:
        off()
        attacher.close()
        bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
