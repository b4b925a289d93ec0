"""The whole agent's cost: what a node pays with the embedded default agent (every receiver) running.

Method (toggled inside one long stream): a workload runs without a break between two sandbox pods,
client and server pinned to different CPUs. The agent process (``retina-otel agent``, the embedded
default, started and stopped as a user would) is switched on and off several times inside that one
stream. Throughput is sampled in 1-s intervals from the interface counters: off phases before and
after every on phase, on phases from ``SETTLE_S`` after the agent is ready. Each on-interval is divided
by the median of its neighbouring off phases; the result is the median of those ratios with a 95%
bootstrap interval. Neighbouring phases see the same machine, so the VM's drift between runs (20-30%)
does not enter the ratio.

Workloads:

* ``udp64_in_path``: iperf3 64-byte UDP frames pod a -> pod b; both host veths match packetparser's
  default patterns, so packetparser (and DNS, drops, ...) sit in the path. A no-op TC program on the same
  hooks, and no-op programs on the raw tracepoints the agent uses per packet or connection
  (``kfree_skb``, ``tcp_probe``, ``inet_sock_set_state``), are toggled in the same stream: what the
  kernel itself charges for the hooks.
* ``udp64_not_in_path``: the same between pods whose veths match no pattern.
* ``tcp_bulk``: iperf3 TCP (default), bytes/s.
* ``short_tcp``: one TCP connection after another (request, response, close), connections/s.
* ``chart_short_tcp``: the same with the Helm chart's default shape (the embedded default plus the
  ``observer`` exporter, ``RETINA_OTEL_OBSERVER``), no client following live flows;
  ``chart_short_tcp_followed``: one client follows (filtered to a port nobody uses, so it is sent
  nothing): what watching costs the node beyond the client's own work.
* ``dns_flood``: DNS queries at a fixed rate against dnsmasq; responses/s and the agent's CPU per query.
* ``breakdown/<workload>``: not a ratio; the kernel's run time of each BPF program and the agent's
  user-space CPU per packet, MB or connection (``kernel.bpf_stats_enabled`` on for that row only).
* ``alone/<receiver>``, ``alone_tcp/<receiver>``, ``alone_short/<receiver>``: ``udp64_in_path``,
  ``tcp_bulk`` and ``short_tcp`` with an agent that runs only that receiver (where the whole agent's
  cost comes from).

The no-op hooks are toggled in ``udp64_in_path``, ``tcp_bulk`` and ``short_tcp``: the part of the cost no
program on the agent's hooks can avoid. In ``udp64_in_path`` and ``short_tcp`` the floor is toggled too
(:class:`Floor`): a program on the same hooks that reads every packet's headers and writes 64 bytes of
what it saw, with the no-op tracepoints; the least that observing every packet costs, before any flow
state or report. And the table (:class:`Floor` with ``table``): the floor plus exact per-flow counting in
the least a table can be (a per-CPU LRU hash keyed by directed flow and interface, one lookup per
packet): what keeping flow state in the kernel costs before anything the agent does with it.

Also: idle RSS, threads and CPU after ready (no traffic), ready time of every start, and the peak RSS
through 150,000 new UDP flows with the OTLP endpoint down.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from retina_otel.config import default_config_text
from retina_otel.sandbox import Pod, Sandbox

AGENT = Path(sys.executable).with_name("retina-otel")
READY_URL = "http://127.0.0.1:18081/readyz"
METRICS_URL = "http://127.0.0.1:10093/metrics"
PORT = 5201
SETTLE_S = 3.0  # after ready: the first interval's start-up work (first flush, first scrape) is not steady state
RECEIVERS = ("packetforward", "linuxutil", "packetparser", "dropreason", "tcpretrans", "dns", "tcplatency")
CHURN_FLOWS = 150_000


# -- statistics ---------------------------------------------------------------------------------------
def _ci95(values: list[float], resamples: int = 4000) -> list[float]:
    """95% bootstrap interval of the median (fixed seed: the same data give the same interval)."""
    if not values:
        return []
    rng = np.random.default_rng(12345)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(resamples, len(data)), replace=True), axis=1)
    return [round(float(q), 3) for q in np.percentile(medians, [2.5, 97.5])]


def _summary(ratios: list[float]) -> dict[str, Any]:
    return {
        "ratio": round(float(np.median(ratios)), 3) if ratios else None,
        "ratio_ci95": _ci95(ratios),
        "intervals": len(ratios),
    }


# -- the agent process ----------------------------------------------------------------------------------
def _pid_stat(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, threads) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[17])


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _ready() -> bool:
    try:
        with urllib.request.urlopen(READY_URL, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class AgentProcess:
    """``retina-otel agent`` as a user runs it; ``start`` returns when /readyz answers 200."""

    def __init__(self, workdir: Path, config: Path | None, env: dict[str, str]) -> None:
        self._args = [str(AGENT), "agent", *(["--config", str(config)] if config else [])]
        self._env = {**os.environ, **env}
        self._log = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90.0) -> float:
        if _ready():
            raise RuntimeError("something already answers on :18081; stop other agents before benchmarking")
        t0 = time.monotonic()
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(self._args, stdout=log, stderr=log, env=self._env)
        while not _ready():
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                self.stop()
                tail = self._log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"agent did not become ready:\n{tail}")
            time.sleep(0.05)
        self.ready_s = time.monotonic() - t0
        return self.ready_s

    def cpu(self) -> float:
        return _pid_stat(self.pid)[0]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _config_with(receivers: tuple[str, ...], workdir: Path) -> Path:
    """The embedded default restricted to ``receivers`` (pipelines left without one are dropped; a
    connector stays when a kept pipeline feeds it)."""
    raw = yaml.safe_load(default_config_text(env={}))
    raw["receivers"] = {k: v for k, v in raw["receivers"].items() if k in receivers}
    connectors = raw.get("connectors") or {}
    pipelines = raw["service"]["pipelines"]
    fed = {e for p in pipelines.values() if any(r in receivers for r in p["receivers"]) for e in p["exporters"]} & set(
        connectors
    )
    kept = {}
    for name, p in pipelines.items():
        p["receivers"] = [r for r in p["receivers"] if r in receivers or r in fed]
        p["exporters"] = [e for e in p["exporters"] if e not in connectors or e in fed]
        if p["receivers"] and p["exporters"]:
            kept[name] = p
    raw["service"]["pipelines"] = kept
    if connectors:
        raw["connectors"] = {k: v for k, v in connectors.items() if k in fed}
        if not raw["connectors"]:
            del raw["connectors"]
    used = {proc for p in kept.values() for proc in p.get("processors", [])}
    raw["processors"] = {k: v for k, v in raw["processors"].items() if k in used}
    path = workdir / f"alone-{'-'.join(receivers)}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- workloads: something that runs for the whole stream and a cumulative counter ------------------------
def _pinned(cpu: int, args: list[str]) -> list[str]:
    cpus = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", str(cpus[cpu % len(cpus)]), *args] if len(cpus) > 1 else args


def _counter(ifname: str, what: str) -> Callable[[], float]:
    path = Path(f"/sys/class/net/{ifname}/statistics/{what}")
    return lambda: float(path.read_text())


@contextlib.contextmanager
def _iperf(client: Pod, server: Pod, udp: bool) -> Iterator[None]:
    srv = server.popen(_pinned(1, ["iperf3", "-s", "-1", "-B", server.ipv4, "-p", str(PORT)]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    extra = ["-u", "-b", "0", "-l", "18"] if udp else []
    cli = client.popen(_pinned(0, ["iperf3", "-c", server.ipv4, "-p", str(PORT), *extra, "-t", "3600"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3.0)  # a stream's first seconds run slower
        yield
    finally:
        for p in (cli, srv):
            p.kill()
            p.wait(timeout=10)


_SHORT_TCP_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 18082)); s.listen(1024)
count, n = open(sys.argv[2], "w"), 0
while True:
    c, _ = s.accept()
    c.recv(256); c.sendall(b"r" * 64); c.close(); n += 1
    if n % 20 == 0:
        count.seek(0); count.write("%12d" % n); count.flush()
"""
_SHORT_TCP_CLIENT = """
import socket, sys
n = 0
while True:
    c = socket.socket(); c.connect((sys.argv[1], 18082)); c.sendall(b"q" * 32)
    while c.recv(256):
        pass
    c.close(); n += 1
"""


@contextlib.contextmanager
def _short_tcp(client: Pod, server: Pod, count_file: Path) -> Iterator[Callable[[], float]]:
    """Connections one after another (the server closes first, so the client's ports never sit in
    TIME_WAIT); yields the server's count of completed connections."""
    count_file.write_text("0")
    srv = server.popen(_pinned(1, [sys.executable, "-c", _SHORT_TCP_SERVER, server.ipv4, str(count_file)]),
                       stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    cli = client.popen(_pinned(0, [sys.executable, "-c", _SHORT_TCP_CLIENT, server.ipv4]), stdout=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        yield lambda: float(count_file.read_text() or 0)
    finally:
        for p in (cli, srv):
            p.kill()
            p.wait(timeout=10)


def _dnsmasq(pod: Pod) -> subprocess.Popen[bytes]:
    return pod.popen(
        ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
         "--port=53", f"--listen-address={pod.ipv4}", "--bind-interfaces", "--user=root",
         "--address=/bench.test/198.18.200.10", "--cache-size=1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


_DNS_CLIENT = """
import socket, struct, sys, time
server, rate = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((server, 53)); s.setblocking(False)
q = b"\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x05bench\\x04test\\x00\\x00\\x01\\x00\\x01"
period, i, t0 = 1.0 / rate, 0, time.monotonic()
while True:
    i += 1
    s.send(struct.pack("!H", i & 0xFFFF) + q)
    try:
        while True:
            s.recv(512)
    except BlockingIOError:
        pass
    delay = t0 + i * period - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""


@contextlib.contextmanager
def _dns_flood(client: Pod, server: Pod, rate: int) -> Iterator[None]:
    srv = _dnsmasq(server)
    time.sleep(0.5)
    cli = client.popen(
        _pinned(0, [sys.executable, "-c", _DNS_CLIENT, server.ipv4, str(rate)]), stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(2.0)
        yield
    finally:
        for p in (cli, srv):
            p.kill()
            p.wait(timeout=10)


# -- the toggle ---------------------------------------------------------------------------------------
def _sample(counter: Callable[[], float], seconds: int) -> list[float]:
    out: list[float] = []
    c0, t0 = counter(), time.monotonic()
    for _ in range(seconds):
        time.sleep(1.0)
        c1, t1 = counter(), time.monotonic()
        out.append((c1 - c0) / (t1 - t0))
        c0, t0 = c1, t1
    return out


class _ProgLoadAttr(ctypes.Structure):
    """The leading members of ``union bpf_attr`` for BPF_PROG_LOAD."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
    ]


_PROG_TYPE_SCHED_CLS = 3
_PROG_TYPE_RAW_TRACEPOINT = 17
_CMD_PROG_LOAD = 5
_CMD_RAW_TRACEPOINT_OPEN = 17
# The raw tracepoints the agent's programs run on per packet or per connection (dropreason, tcplatency).
NOOP_TRACEPOINTS = ("kfree_skb", "tcp_probe", "inet_sock_set_state")


class _RawTracepointOpenAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32)]


def _load_noop(prog_type: int = _PROG_TYPE_SCHED_CLS) -> int:
    """A two-instruction program (``return TC_ACT_UNSPEC;`` for SCHED_CLS, ``return 0;`` for a raw
    tracepoint), loaded with bpf(2) directly: the benchmark process must not map libLLVM/libclang (bcc),
    or the agent's pages of them stay shared and resident and its RSS reads ~75 MB high."""
    from retina_otel.bpf.syscall import bpf

    ret = 0xFFFFFFFF if prog_type == _PROG_TYPE_SCHED_CLS else 0
    insns = (ctypes.c_uint64 * 2)(
        (ret << 32) | 0xB7,  # BPF_MOV64_IMM(BPF_REG_0, ret): opcode 0xb7, imm in the high word
        0x95,  # BPF_EXIT
    )
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(
        prog_type=prog_type, insn_cnt=2, insns=ctypes.addressof(insns), license=ctypes.addressof(license_)
    )
    return bpf(_CMD_PROG_LOAD, attr, "BPF_PROG_LOAD")


def _raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """Attach ``prog_fd`` to the raw tracepoint ``name``; closing the returned fd detaches it."""
    from retina_otel.bpf.syscall import bpf

    name_buf = ctypes.create_string_buffer(name.encode())
    attr = _RawTracepointOpenAttr(name=ctypes.addressof(name_buf), prog_fd=prog_fd)
    return bpf(_CMD_RAW_TRACEPOINT_OPEN, attr, "BPF_RAW_TRACEPOINT_OPEN")


class Hook:
    """A no-op TC program switched onto the pods' host veths exactly as packetparser attaches, and no-op
    programs on the agent's per-packet raw tracepoints (:data:`NOOP_TRACEPOINTS`)."""

    def __init__(self, pods: tuple[Pod, Pod]) -> None:
        from retina_otel.bpf.tc import FilterSpec, make_attacher

        self._fd = _load_noop()
        self._tp_fd = _load_noop(_PROG_TYPE_RAW_TRACEPOINT)
        self._links: list[int] = []
        from retina_otel.receivers.packetparser.receiver import FILTER_SPEC

        spec = FilterSpec(name="retina_otel_bench_noop", prio=FILTER_SPEC.prio, handle=FILTER_SPEC.handle)
        self._attacher = make_attacher(spec, "auto")
        self._pods = pods

    def on(self) -> None:
        for pod in self._pods:
            self._attacher.attach(pod.host_ifindex, "ingress", self._fd)
            self._attacher.attach(pod.host_ifindex, "egress", self._fd)
        self._links = [_raw_tracepoint_open(name, self._tp_fd) for name in NOOP_TRACEPOINTS]

    def off(self) -> None:
        for pod in self._pods:
            self._attacher.detach(pod.host_ifindex)
        self._detach_tracepoints()

    def _detach_tracepoints(self) -> None:
        for fd in self._links:
            os.close(fd)
        self._links = []

    def close(self) -> None:
        self._detach_tracepoints()
        self._attacher.close()
        os.close(self._fd)
        os.close(self._tp_fd)


class Floor:
    """The floor of per-packet observation (:file:`floor_observer.bpf.c`): a program on the same hooks
    that reads every packet's headers and writes 64 bytes of what it saw, no-op programs on the raw
    tracepoints; no flow state, no user space. With ``table`` it also counts every packet in a per-CPU LRU
    hash keyed by directed flow and interface. Run by a helper process (``floor_observer.py``: bcc must
    not be mapped in this one), switched on and off over a pipe."""

    def __init__(self, pods: tuple[Pod, Pod], table: bool = False) -> None:
        script = Path(__file__).with_name("floor_observer.py")
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        flags = ["--table"] if table else []
        args = [sys.executable, str(script), *flags, *(str(pod.host_ifindex) for pod in pods)]
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"floor_observer: expected {word!r}, got {line!r} (exit {self._proc.poll()})")

    def _command(self, word: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(word + "\n")
        self._proc.stdin.flush()
        self._expect("ok")

    def on(self) -> None:
        self._command("on")

    def off(self) -> None:
        self._command("off")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()  # end of input: the helper detaches everything and exits
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)


@contextlib.contextmanager
def _floor(pods: tuple[Pod, Pod], table: bool = False) -> Iterator[Floor]:
    floor = Floor(pods, table)
    try:
        yield floor
    finally:
        floor.close()


@contextlib.contextmanager
def _hook(pods: tuple[Pod, Pod]) -> Iterator[Hook]:
    hook = Hook(pods)
    try:
        yield hook
    finally:
        hook.close()


class _Reference(Protocol):
    """A reference phase of :func:`_toggled` (:class:`Hook`, :class:`Floor`)."""

    def on(self) -> None: ...
    def off(self) -> None: ...


def _toggled(
    name: str,
    counter: Callable[[], float],
    agent: AgentProcess,
    cycles: int,
    phase_s: int,
    *,
    hook: Hook | None = None,
    floor: Floor | None = None,
    table: Floor | None = None,
    unit: str = "pps",
    cpu_per: tuple[str, float] = ("mpkt", 1e6),
    during: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
) -> dict[str, Any]:
    """Cycles of off | (no-op hook) | (floor) | (table) | agent on, then a last off phase, inside the
    running workload; ``during`` runs around each on phase, once the agent is ready (a client of it, say)."""
    candidates = (("noop", hook), ("floor", floor), ("table", table))
    references: dict[str, _Reference] = {k: v for k, v in candidates if v is not None}
    off: list[list[float]] = []
    on: list[list[float]] = []
    reference_phases: dict[str, list[list[float]]] = {k: [] for k in references}
    cpu = work = 0.0
    ready: list[float] = []
    for _cycle in range(cycles):
        time.sleep(1.0)
        off.append(_sample(counter, phase_s))
        for key, reference in references.items():
            reference.on()
            time.sleep(0.3)
            reference_phases[key].append(_sample(counter, phase_s))
            reference.off()
            time.sleep(0.3)
        ready.append(agent.start())
        with during() if during is not None else contextlib.nullcontext():
            time.sleep(SETTLE_S)
            cpu0, w0 = agent.cpu(), counter()
            on.append(_sample(counter, phase_s))
            cpu += agent.cpu() - cpu0
            work += counter() - w0
        agent.stop()
    time.sleep(1.0)
    off.append(_sample(counter, phase_s))

    def ratios(phases: list[list[float]]) -> list[float]:
        out: list[float] = []
        for i, values in enumerate(phases):
            base = float(np.median(off[i] + off[i + 1]))
            out.extend(v / base for v in values)
        return out

    row: dict[str, Any] = {"test": name, **_summary(ratios(on))}
    for key, phases in reference_phases.items():
        row.update({f"{key}_{k}": v for k, v in _summary(ratios(phases)).items() if k != "intervals"})
    row[f"{unit}_off_median"] = round(float(np.median([v for p in off for v in p])))
    row[f"{unit}_on_median"] = round(float(np.median([v for p in on for v in p])))
    row["agent_cpu_share"] = round(cpu / (cycles * phase_s), 4)
    row[f"agent_cpu_s_per_{cpu_per[0]}"] = round(cpu / max(work, 1.0) * cpu_per[1], 4)
    row["ready_s"] = round(float(np.median(ready)), 2)
    return row


# -- where the cost goes ------------------------------------------------------------------------------
_BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _program_ids(pid: int) -> set[int]:
    """IDs of the BPF programs process ``pid`` holds (its file descriptors' ``prog_id``)."""
    ids = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            for line in fdinfo.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    return ids


def _bpf_programs(pid: int) -> dict[tuple[int, str], tuple[int, int]]:
    """(id, name) -> (run_time_ns, run_cnt) of the BPF programs of process ``pid`` (bpftool)."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True).stdout
    mine = _program_ids(pid)
    return {
        (p["id"], p.get("name", "?")): (p.get("run_time_ns", 0), p.get("run_cnt", 0))
        for p in json.loads(out)
        if p["id"] in mine
    }


def _breakdown(
    name: str, counter: Callable[[], float], agent: AgentProcess, seconds: int, per: tuple[str, float]
) -> dict[str, Any]:
    """Where the agent's cost per unit of work goes: kernel time of each BPF program (the kernel's own
    run-time statistics, switched on only for this row and restored after) and the agent's user-space CPU.
    Not a ratio: the statistics themselves cost ~2 clock reads per program run."""
    agent.start()
    was = _BPF_STATS.read_text().strip()
    try:
        time.sleep(SETTLE_S)
        _BPF_STATS.write_text("1")
        progs0, work0, cpu0, t0 = _bpf_programs(agent.pid), counter(), agent.cpu(), time.monotonic()
        time.sleep(seconds)
        progs1, work1, cpu1, t1 = _bpf_programs(agent.pid), counter(), agent.cpu(), time.monotonic()
    finally:
        _BPF_STATS.write_text(was)
        agent.stop()
    units = max(work1 - work0, 1.0) / per[1]
    by_name: dict[str, list[int]] = {}  # programs of one name (several instances) summed
    for key, (run_ns, runs) in progs1.items():
        run_ns0, runs0 = progs0.get(key, (0, 0))
        if runs > runs0:
            total = by_name.setdefault(key[1], [0, 0])
            total[0] += run_ns - run_ns0
            total[1] += runs - runs0
    programs = {
        name: {
            "runs_per_unit": round(runs / units, 2),
            "ns_per_unit": round(run_ns / units),
            "ns_per_run": round(run_ns / runs),
        }
        for name, (run_ns, runs) in by_name.items()
    }
    return {
        "test": f"breakdown/{name}",
        "unit": per[0],
        "units_per_s": round(units / (t1 - t0), 1),
        "bpf_ns_per_unit": sum(p["ns_per_unit"] for p in programs.values()),
        "agent_user_ns_per_unit": round((cpu1 - cpu0) / units * 1e9),
        "programs": dict(sorted(programs.items(), key=lambda kv: -kv[1]["ns_per_unit"])),
    }


# -- idle and churn ---------------------------------------------------------------------------------------
def _idle(agent: AgentProcess, seconds: int) -> dict[str, Any]:
    ready_s = agent.start()
    try:
        time.sleep(10.0)  # past the first report intervals
        cpu0, t0 = agent.cpu(), time.monotonic()
        time.sleep(seconds)
        cpu_share = (agent.cpu() - cpu0) / (time.monotonic() - t0)
        _cpu, threads = _pid_stat(agent.pid)
        return {
            "test": "idle",
            "ready_s": round(ready_s, 2),
            "rss_mb": round(_status_kb(agent.pid, "VmRSS") / 1024, 1),
            "threads": threads,
            "cpu_share": round(cpu_share, 4),
        }
    finally:
        agent.stop()


_CHURN_SENDER = """
import socket, sys
server, flows = sys.argv[1], int(sys.argv[2])
socks = []
for i in range(flows // 50000 + 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 40000 + i)); socks.append(s)
for n in range(flows):
    socks[n // 50000].sendto(b"x", (server, 1 + n % 50000))
"""


def _lost_events() -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), urllib.request.urlopen(METRICS_URL, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("controlplane_networkobservability_lost_events_counter{"):
                labels, value = line.rsplit(" ", 1)
                out[labels.split("{", 1)[1].rstrip("}")] = float(value)
    return out


def _churn(workdir: Path, a: Pod, b: Pod, flows: int, env: dict[str, str]) -> dict[str, Any]:
    """150,000 new UDP flows a -> b (distinct ports) with the OTLP endpoint down; the agent's peak RSS
    while they are counted, reported, enriched and queued for export."""
    agent = AgentProcess(workdir, None, {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    agent.start()
    try:
        time.sleep(3.0)
        rss0 = _status_kb(agent.pid, "VmRSS")
        started = time.monotonic()
        sender = a.popen([sys.executable, "-c", _CHURN_SENDER, b.ipv4, str(flows)], stdout=subprocess.DEVNULL)
        peak = rss0
        deadline = time.monotonic() + 45.0  # sending, then two report and export intervals
        while time.monotonic() < deadline:
            peak = max(peak, _status_kb(agent.pid, "VmRSS"))
            time.sleep(0.25)
        sender.wait(timeout=60)
        send_s = time.monotonic() - started
        lost = _lost_events()
        hwm = _status_kb(agent.pid, "VmHWM")
        return {
            "test": "churn",
            "new_flows": flows,
            "otlp": "down",
            "rss_before_mb": round(rss0 / 1024, 1),
            "rss_peak_mb": round(max(peak, hwm) / 1024, 1),
            "rss_after_mb": round(_status_kb(agent.pid, "VmRSS") / 1024, 1),
            "seconds": round(send_s, 1),
            "lost_events": lost,
        }
    finally:
        agent.stop()


@contextlib.contextmanager
def _follower(socket_path: Path) -> Iterator[None]:
    """``retina-otel observe --follow`` on the agent's socket, filtered to a port no traffic uses."""
    proc = subprocess.Popen(
        [str(AGENT), "observe", "--server", f"unix://{socket_path}", "--follow", "--to-port", "9"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.kill()  # as the workloads' clients above: it has nothing to flush
        proc.wait(timeout=10)


def _endpoints_file(pods: list[Pod], workdir: Path) -> Path:
    """The pods named for the default config's file-backed k8sattributes (pod-level metrics: real work)."""
    entries = [
        {"name": f"{p.name}-bench", "namespace": "bench", "ips": [ip for ip in (p.ipv4, p.ipv6) if ip],
         "labels": {"app": p.name}, "workload": {"kind": "Deployment", "name": p.name}}
        for p in pods
    ]  # fmt: skip
    path = workdir / "endpoints.yaml"
    path.write_text(yaml.safe_dump({"endpoints": entries}))
    return path


def _rows_wanted() -> Callable[[str], bool]:
    """``BENCH_AGENT_ROWS=udp64_in_path,alone_tcp/`` runs only the rows whose name starts with one of
    the given prefixes (for working on one cost); unset runs all."""
    wanted = [w for w in os.environ.get("BENCH_AGENT_ROWS", "").split(",") if w]
    return lambda name: not wanted or any(name.startswith(w) for w in wanted)


def run(quick: bool) -> dict[str, Any]:
    cycles = 1 if quick else 3
    phase = 5 if quick else 10
    alone_cycles, alone_phase = (1, 5) if quick else (2, 8)
    want = _rows_wanted()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rotel-bench-agent-") as tmp, Sandbox() as sb:
        workdir = Path(tmp)
        a, b = sb.add_pod("a"), sb.add_pod("b")
        c, d = sb.add_pod("c", veth_prefix="nb"), sb.add_pod("d", veth_prefix="nb")
        for pod in (a, b, c, d):
            pod.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=45000 60999"])
        for src, dst in ((a, b), (c, d)):
            src.run(["ping", "-c", "1", "-W", "2", dst.ipv4])
        env = {"RETINA_OTEL_ENDPOINTS_FILE": str(_endpoints_file([a, b, c, d], workdir))}
        default = AgentProcess(workdir, None, env)
        udp_pps, tcp_bytes = _counter(b.host_veth, "tx_packets"), _counter(b.host_veth, "tx_bytes")
        bulk: dict[str, Any] = {"unit": "bytes_per_s", "cpu_per": ("gbyte", 1e9)}
        short: dict[str, Any] = {"unit": "conn_per_s", "cpu_per": ("kconn", 1e3)}

        if want("idle"):
            rows.append(_idle(default, 10 if quick else 20))
        if want("udp64_in_path"):
            with (
                _hook((a, b)) as hook,
                _floor((a, b)) as floor,
                _floor((a, b), table=True) as table,
                _iperf(a, b, udp=True),
            ):
                rows.append(
                    _toggled("udp64_in_path", udp_pps, default, cycles, phase, hook=hook, floor=floor, table=table)
                )
        if want("udp64_not_in_path"):
            with _iperf(c, d, udp=True):
                rows.append(_toggled("udp64_not_in_path", _counter(d.host_veth, "tx_packets"), default, cycles, phase))
        if want("tcp_bulk"):
            with _hook((a, b)) as hook, _iperf(a, b, udp=False):
                rows.append(_toggled("tcp_bulk", tcp_bytes, default, cycles, phase, hook=hook, **bulk))
        if want("short_tcp"):
            with (
                _hook((a, b)) as hook,
                _floor((a, b)) as floor,
                _floor((a, b), table=True) as table,
                _short_tcp(a, b, workdir / "connections") as connections,
            ):
                rows.append(
                    _toggled(
                        "short_tcp", connections, default, cycles, phase, hook=hook, floor=floor, table=table, **short
                    )
                )
        if want("chart_short_tcp"):
            # The Helm chart's default shape: the observer exporter in the logs pipelines, nobody following;
            # then one client following live flows of a port nothing uses (`observe --follow --to-port 9`):
            # Retina's report rule and the RTT join run, the client is sent nothing.
            observer = workdir / "observer.sock"
            chart = AgentProcess(workdir, None, {**env, "RETINA_OTEL_OBSERVER": f"unix://{observer}"})
            with _hook((a, b)) as hook, _short_tcp(a, b, workdir / "connections") as connections:
                rows.append(_toggled("chart_short_tcp", connections, chart, cycles, phase, hook=hook, **short))
            if want("chart_short_tcp_followed"):
                with _short_tcp(a, b, workdir / "connections") as connections:
                    rows.append(_toggled("chart_short_tcp_followed", connections, chart, cycles, phase,
                                         during=lambda: _follower(observer), **short))  # fmt: skip
        if want("breakdown/"):
            with _iperf(a, b, udp=True):
                rows.append(_breakdown("udp64_in_path", udp_pps, default, phase, ("packet", 1.0)))
            with _iperf(a, b, udp=False):
                rows.append(_breakdown("tcp_bulk", tcp_bytes, default, phase, ("mbyte", 1e6)))
            with _short_tcp(a, b, workdir / "connections") as connections:
                rows.append(_breakdown("short_tcp", connections, default, phase, ("conn", 1.0)))
        if want("dns_flood"):
            with _dns_flood(a, b, rate=2000 if quick else 5000):
                rows.append(_toggled("dns_flood", _counter(a.host_veth, "tx_packets"), default, cycles, phase,
                                     unit="responses_per_s", cpu_per=("kquery", 1e3)))  # fmt: skip
        for receiver in RECEIVERS:
            alone = AgentProcess(workdir, _config_with((receiver,), workdir), env)
            if want(f"alone/{receiver}"):
                with _iperf(a, b, udp=True):
                    rows.append(_toggled(f"alone/{receiver}", udp_pps, alone, alone_cycles, alone_phase))
            if want(f"alone_tcp/{receiver}"):
                with _iperf(a, b, udp=False):
                    rows.append(_toggled(f"alone_tcp/{receiver}", tcp_bytes, alone, alone_cycles, alone_phase, **bulk))
            if want(f"alone_short/{receiver}"):
                with _short_tcp(a, b, workdir / "connections") as connections:
                    rows.append(_toggled(f"alone_short/{receiver}", connections, alone, alone_cycles, alone_phase,
                                         **short))  # fmt: skip
        if want("churn"):
            rows.append(_churn(workdir, a, b, 20_000 if quick else CHURN_FLOWS, env))

    by = {r["test"]: r for r in rows}

    def ratio(test: str) -> float | None:
        return by[test].get("ratio") if test in by else None

    def at_least(value: float | None, bound: float) -> bool | None:
        return None if value is None else value >= bound

    def at_most(test: str, key: str, bound: float) -> bool | None:
        return by[test][key] <= bound if test in by else None

    alone_ratios = [ratio(f"alone{w}/{r}") for w in ("", "_tcp", "_short") for r in RECEIVERS]
    alone_known = [v for v in alone_ratios if v is not None]
    targets = {
        "whole_udp64_in_path_ge_0.97": at_least(ratio("udp64_in_path"), 0.97),
        "whole_udp64_not_in_path_ge_0.98": at_least(ratio("udp64_not_in_path"), 0.98),
        "tcp_bulk_ge_0.98": at_least(ratio("tcp_bulk"), 0.98),
        "short_tcp_ge_0.95": at_least(ratio("short_tcp"), 0.95),
        "each_receiver_alone_ge_0.98": None if None in alone_ratios else all(v >= 0.98 for v in alone_known),
        "idle_rss_le_150mb": at_most("idle", "rss_mb", 150),
        "churn_peak_rss_le_250mb": at_most("churn", "rss_peak_mb", 250),
        "ready_le_5s": at_most("idle", "ready_s", 5.0),
        "idle_cpu_le_0.5pct": at_most("idle", "cpu_share", 0.005),
    }
    notes = (
        "ratio = median over on-intervals of (interval / median of the neighbouring off phases), 95% bootstrap "
        "interval; noop_ratio: a no-op TC program on the same hooks and no-op programs on the raw tracepoints "
        "kfree_skb, tcp_probe and inet_sock_set_state (the kernel's own price for the hooks); floor_ratio: "
        "instead of the no-op TC program one that reads every packet's headers and writes 64 bytes of what it "
        "saw (no flow state, no user space): the least any per-packet observer on these hooks costs; table_ratio: "
        "the floor plus exact per-flow counting in a per-CPU LRU hash (one lookup per packet, an insert per new "
        "flow): what flow state in the kernel costs before anything else. "
        "Targets are null for rows not run."
    )
    return {"rows": rows, "targets": targets, "notes": notes}
