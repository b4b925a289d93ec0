"""Run tcpdump until the duration passes, the pcap reaches the size limit, or we are told to stop.

tcpdump takes one ``-i``, so several interfaces mean one tcpdump each (``<stem>-<iface>.pcap``).
Each runs with ``-U`` (packet-buffered writes: the size check sees real sizes and nothing is lost
in a buffer), ``-Z root`` (Debian's tcpdump drops to the ``tcpdump`` user after opening the first
file, which breaks ``-C`` rotation into a root-owned directory and is meaningless in a container
that runs as root anyway), ``--immediate-mode`` (without it libpcap hands packets over in blocks
up to a second late, and a stop could lose the last second) and the expression after ``--`` so it
can never be read as an option.

Size is enforced by polling the pcap files (all interfaces): tcpdump has no "stop at N bytes"
option (``-C`` with ``-W 1`` overwrites instead of stopping). With ``fileCount`` the capture is
Retina's rotating one instead: maxCaptureSize per file (``-C``), ``fileCount`` files reused as a
ring (``-W``, the oldest overwritten), no size stop; it ends at the duration or when stopped
(the Capture deleted). Stopping first lets tcpdump
drain what the kernel queued (until the pcap stops growing, bounded), then sends SIGTERM, which
makes tcpdump flush and close the pcap; SIGKILL only after a grace period.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .netns import netns_args

__all__ = ["TcpdumpError", "TcpdumpRun", "TcpdumpSettings", "run_tcpdump", "tcpdump_args"]

MB = 1024 * 1024
_LISTENING = re.compile(rb"listening on ")
_CAPTURED = re.compile(rb"(\d+) packets? captured")
_DROPPED = re.compile(rb"(\d+) packets? dropped by kernel")
_RECEIVED = re.compile(rb"(\d+) packets? received by filter")


class TcpdumpError(RuntimeError):
    pass


@dataclass(frozen=True)
class TcpdumpSettings:
    interfaces: tuple[str, ...] = ()
    expression: str = ""
    duration: float | None = None
    max_bytes: int | None = None
    packet_size: int | None = None
    file_count: int | None = None
    netns: str | None = None
    #: Retina's tcpdump switches as options (``TcpdumpFlags.args()``); ``-n``, ``-U`` and
    #: ``--immediate-mode`` are always passed (the size check and clean stops need them).
    options: tuple[str, ...] = ()
    tcpdump: str = "tcpdump"
    poll_interval: float = 0.1
    start_timeout: float = 15.0
    stop_grace: float = 15.0
    drain_quiet: float = 0.3
    drain_max: float = 2.0


@dataclass
class TcpdumpRun:
    """What happened; ``error`` is set when the capture itself failed (it may still have data)."""

    stop_reason: str = "none"
    started: bool = False
    error: str | None = None
    pcap_files: list[Path] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    returncodes: list[int | None] = field(default_factory=list)
    packets_captured: int | None = None
    packets_received: int | None = None
    packets_dropped: int | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    bytes: int = 0


def tcpdump_args(settings: TcpdumpSettings, interface: str, pcap: Path) -> list[str]:
    args = [settings.tcpdump, "-i", interface, "-w", str(pcap), "-U", "--immediate-mode", "-n", "-Z", "root"]
    args += [opt for opt in settings.options if opt not in args]
    if settings.packet_size:
        args += ["-s", str(settings.packet_size)]
    if settings.file_count and settings.max_bytes:
        # Retina's rotating capture: maxCaptureSize per file (-C counts millions of bytes), fileCount files
        # reused in a ring (-W), the oldest overwritten; it runs until the duration or a stop.
        per_file = max(1, math.ceil(settings.max_bytes / 1_000_000))
        args += ["-C", str(per_file), "-W", str(settings.file_count)]
    if settings.expression:
        args += ["--", settings.expression]
    return netns_args(settings.netns, args)


def _pcap_paths(directory: Path, stem: str, interfaces: Sequence[str]) -> list[tuple[str, Path]]:
    if len(interfaces) <= 1:
        iface = interfaces[0] if interfaces else "any"
        return [(iface, directory / f"{stem}.pcap")]
    return [(iface, directory / f"{stem}-{iface}.pcap") for iface in interfaces]


def _written(pcaps: Sequence[Path]) -> list[Path]:
    """Every file tcpdump wrote for these pcaps, rotations (``x.pcap1``, ``x.pcap2``...) included."""
    found: list[Path] = []
    for pcap in pcaps:
        pattern = re.compile(re.escape(pcap.name) + r"\d*")
        rotated = [p for p in pcap.parent.glob(pcap.name + "*") if pattern.fullmatch(p.name)]
        found.extend(sorted(rotated, key=lambda p: (len(p.name), p.name)))
    return found


def _total_size(files: Sequence[Path]) -> int:
    total = 0
    for path in files:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _sum_counter(pattern: re.Pattern[bytes], logs: Sequence[Path]) -> int | None:
    total = None
    for log in logs:
        try:
            matches = pattern.findall(log.read_bytes())
        except OSError:
            continue
        if matches:
            total = (total or 0) + int(matches[-1])
    return total


def run_tcpdump(
    settings: TcpdumpSettings,
    directory: Path,
    stem: str,
    *,
    stop: threading.Event,
    ready: threading.Event | None = None,
) -> TcpdumpRun:
    """Capture into ``directory`` until a stop condition; always returns with every tcpdump ended."""
    run = TcpdumpRun()
    targets = _pcap_paths(directory, stem, settings.interfaces)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for iface, pcap in targets:
            log = directory / ("tcpdump.log" if len(targets) == 1 else f"tcpdump-{iface}.log")
            args = tcpdump_args(settings, iface, pcap)
            run.commands.append(args)
            with open(log, "ab") as log_fh:
                log_fh.write(f"# {' '.join(args)}\n".encode())
                log_fh.flush()
                try:
                    procs.append(
                        subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT)
                    )
                except OSError as exc:
                    raise TcpdumpError(f"cannot start tcpdump: {exc.strerror or exc}") from None
            logs.append(log)
        _wait_listening(procs, logs, settings, stop)
        run.started = True
        run.started_at = time.time()
        if ready is not None:
            ready.set()
        run.stop_reason = _wait_stop(procs, [p for _, p in targets], settings, stop)
        if run.stop_reason in ("signal", "duration"):
            _drain([p for _, p in targets], settings)
    except TcpdumpError as exc:
        run.error = str(exc)
        run.stop_reason = "error"
    finally:
        _terminate(procs, settings.stop_grace)
        run.stopped_at = time.time()
    run.returncodes = [p.returncode for p in procs]
    run.pcap_files = _written([p for _, p in targets])
    run.bytes = _total_size(run.pcap_files)
    run.packets_captured = _sum_counter(_CAPTURED, logs)
    run.packets_received = _sum_counter(_RECEIVED, logs)
    run.packets_dropped = _sum_counter(_DROPPED, logs)
    if run.error is None and run.stop_reason == "exited":
        bad = [rc for rc in run.returncodes if rc not in (0, None)]
        if bad:
            run.error = f"tcpdump exited with status {bad[0]}: {_log_tail(logs)}"
    return run


def _log_tail(logs: Sequence[Path]) -> str:
    lines: list[str] = []
    for log in logs:
        with contextlib.suppress(OSError):
            lines += [ln for ln in log.read_text(errors="replace").splitlines() if ln and not ln.startswith("# ")]
    return "; ".join(lines[-3:]) or "no output"


def _wait_listening(
    procs: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path], settings: TcpdumpSettings, stop: threading.Event
) -> None:
    deadline = time.monotonic() + settings.start_timeout
    pending = set(range(len(procs)))
    while pending:
        for i in sorted(pending):
            with contextlib.suppress(OSError):
                if _LISTENING.search(logs[i].read_bytes()):
                    pending.discard(i)
                    continue
            if procs[i].poll() is not None:
                raise TcpdumpError(f"tcpdump exited at start with status {procs[i].returncode}: {_log_tail([logs[i]])}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TcpdumpError(f"tcpdump did not start listening within {settings.start_timeout:.0f}s")
        if stop.wait(0.02):
            raise TcpdumpError("stopped before tcpdump started listening")


def _wait_stop(
    procs: Sequence[subprocess.Popen[bytes]], pcaps: Sequence[Path], settings: TcpdumpSettings, stop: threading.Event
) -> str:
    started = time.monotonic()
    size_stop = settings.max_bytes is not None and not settings.file_count
    while True:
        if stop.is_set():
            return "signal"
        if settings.duration is not None and time.monotonic() - started >= settings.duration:
            return "duration"
        if size_stop and _total_size(_written(pcaps)) >= (settings.max_bytes or 0):
            return "size"
        if any(p.poll() is not None for p in procs):
            return "exited"
        timeout = settings.poll_interval
        if settings.duration is not None:
            timeout = max(0.0, min(timeout, settings.duration - (time.monotonic() - started)))
        stop.wait(timeout)


def _drain(pcaps: Sequence[Path], settings: TcpdumpSettings) -> None:
    """Give tcpdump a moment to write what the kernel already queued for it.

    tcpdump exits from its SIGTERM handler without reading what is left in its socket ring, so a
    busy machine could lose the last packets. Wait until the pcap stops growing for
    ``drain_quiet`` seconds (at most ``drain_max``) before signalling.
    """
    deadline = time.monotonic() + settings.drain_max
    last = _total_size(_written(pcaps))
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(min(0.05, settings.drain_quiet))
        size = _total_size(_written(pcaps))
        if size != last:
            last, quiet_since = size, time.monotonic()
        elif time.monotonic() - quiet_since >= settings.drain_quiet:
            return


def _terminate(procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
