"""The network metadata that goes into a capture bundle next to the pcap.

Every command runs with a timeout and an output cap; a command that is missing, fails or times out
records its error in its section and in ``metadata-commands.json`` and never aborts the capture.
The /proc copies are bounded (file count, bytes per file, total bytes) and skip what cannot be read
(``/proc/sys/net/ipv4/route/flush`` has no read function, for one).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .netns import netns_args, run_in_netns

__all__ = ["CommandRecord", "MetadataLimits", "collect_metadata", "copy_proc_tree", "run_command"]


@dataclass(frozen=True)
class MetadataLimits:
    command_timeout: float = 15.0
    command_output_bytes: int = 16 * 1024 * 1024
    proc_max_files: int = 5000
    proc_file_bytes: int = 4 * 1024 * 1024
    proc_total_bytes: int = 64 * 1024 * 1024


@dataclass
class CommandRecord:
    command: str
    description: str
    file: str
    returncode: int | None = None
    seconds: float = 0.0
    error: str | None = None


# (file, description, argv) — grouped into one text file per topic, like Retina's bundle.
COMMANDS: list[tuple[str, str, list[str]]] = [
    ("ip-resources.txt", "IP addresses", ["ip", "-d", "addr", "show"]),
    ("ip-resources.txt", "links and their statistics", ["ip", "-d", "-s", "link", "show"]),
    ("ip-resources.txt", "IPv4 neighbours", ["ip", "-4", "neigh", "show"]),
    ("ip-resources.txt", "IPv6 neighbours", ["ip", "-6", "neigh", "show"]),
    ("ip-resources.txt", "IPv4 policy rules", ["ip", "-4", "rule", "list"]),
    ("ip-resources.txt", "IPv6 policy rules", ["ip", "-6", "rule", "list"]),
    ("ip-resources.txt", "IPv4 routes of all tables", ["ip", "-4", "route", "show", "table", "all"]),
    ("ip-resources.txt", "IPv6 routes of all tables", ["ip", "-6", "route", "show", "table", "all"]),
    ("iptables-rules.txt", "IPv4 iptables rules and counters", ["iptables-save", "-c"]),
    ("iptables-rules.txt", "IPv6 iptables rules and counters", ["ip6tables-save", "-c"]),
    ("nft-ruleset.txt", "nftables ruleset", ["nft", "list", "ruleset"]),
    ("socket-stats.txt", "socket summary", ["ss", "-s"]),
    ("socket-stats.txt", "TCP and UDP sockets with processes", ["ss", "-tanpuei"]),
]

PROC_TREES = [("/proc/thread-self/net", "proc-net"), ("/proc/sys/net", "proc-sys-net")]


def run_command(
    argv: Sequence[str], *, netns: str | None, timeout: float, max_bytes: int
) -> tuple[bytes, CommandRecord]:
    """Run one metadata command; never raises. Returns (stdout+stderr, record)."""
    record = CommandRecord(command=shlex.join(argv), description="", file="")
    full = netns_args(netns, argv)
    start = time.monotonic()
    try:
        proc = subprocess.run(full, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        record.error = f"{argv[0]}: command not found"
        output = b""
    except subprocess.TimeoutExpired as exc:
        record.error = f"timed out after {timeout:.0f}s"
        output = (exc.stdout or b"") + (exc.stderr or b"")
    except OSError as exc:
        record.error = f"could not run: {exc.strerror or exc}"
        output = b""
    else:
        record.returncode = proc.returncode
        output = proc.stdout
        if proc.stderr:
            output += b"\n[stderr]\n" + proc.stderr
        if proc.returncode != 0:
            record.error = f"exit status {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[:500]}"
    record.seconds = round(time.monotonic() - start, 3)
    if len(output) > max_bytes:
        output = output[:max_bytes] + f"\n[truncated at {max_bytes} bytes]\n".encode()
    return output, record


@dataclass
class _CopyStats:
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    truncated: bool = False


def copy_proc_tree(src: str, dest: Path, limits: MetadataLimits, stats: _CopyStats | None = None) -> dict[str, object]:
    """Copy the readable regular files under ``src`` (a /proc directory) to ``dest``, bounded."""
    stats = stats or _CopyStats()
    root = Path(os.path.realpath(src)) if not src.startswith("/proc/thread-self") else Path(src)
    dest.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if stats.files >= limits.proc_max_files or stats.bytes >= limits.proc_total_bytes:
                stats.truncated = True
                return _summary(src, stats)
            path = Path(dirpath) / name
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                data = _read_bounded(path, limits.proc_file_bytes)
            except OSError as exc:
                if len(stats.skipped) < 200:
                    stats.skipped.append(f"{rel_dir / name}: {exc.strerror or exc}")
                continue
            target = dest / rel_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            stats.files += 1
            stats.bytes += len(data)
    return _summary(src, stats)


def _read_bounded(path: Path, limit: int) -> bytes:
    """Read in small chunks: a large read() on a sysctl file fails with ENOMEM."""
    chunks: list[bytes] = []
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while size < limit:
            chunk = fh.read(min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def _summary(src: str, stats: _CopyStats) -> dict[str, object]:
    return {
        "source": src,
        "files": stats.files,
        "bytes": stats.bytes,
        "truncated": stats.truncated,
        "unreadable": stats.skipped,
    }


def collect_metadata(
    dest: Path, *, netns: str | None = None, limits: MetadataLimits | None = None
) -> list[CommandRecord]:
    """Write the metadata files into ``dest``; returns one record per command (errors included)."""
    limits = limits or MetadataLimits()
    dest.mkdir(parents=True, exist_ok=True)
    records: list[CommandRecord] = []
    sections: dict[str, list[bytes]] = {}
    for filename, description, argv in COMMANDS:
        output, record = run_command(
            argv, netns=netns, timeout=limits.command_timeout, max_bytes=limits.command_output_bytes
        )
        record.description = description
        record.file = filename
        records.append(record)
        header = f"===== {record.command}  ({description})\n".encode()
        if record.error:
            header += f"[error] {record.error}\n".encode()
        sections.setdefault(filename, []).append(header + output + b"\n")
    for filename, chunks in sections.items():
        (dest / filename).write_bytes(b"".join(chunks))

    proc_summaries: list[dict[str, object]] = []
    for src, sub in PROC_TREES:
        start = time.monotonic()
        record = CommandRecord(command=f"copy {src}", description="kernel network state", file=f"{sub}/")
        try:
            summary = run_in_netns(netns, lambda s=src, d=dest / sub: copy_proc_tree(s, d, limits))  # type: ignore[misc]
            proc_summaries.append(summary)
            record.returncode = 0
            if summary["truncated"]:
                record.error = "stopped at the size or file-count limit"
        except Exception as exc:  # the bundle must still be written
            record.error = f"{type(exc).__name__}: {exc}"
        record.seconds = round(time.monotonic() - start, 3)
        records.append(record)
    (dest / "metadata-commands.json").write_text(
        json.dumps({"commands": [asdict(r) for r in records], "proc": proc_summaries}, indent=2) + "\n"
    )
    return records
