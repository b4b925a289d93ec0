"""Shared bcc plumbing: loading a program with a clear error when the kernel headers are missing.

bcc stays at the edge: only receivers import this package, and only in ``start()``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BpfUnavailable", "check_environment", "load_bpf"]


class BpfUnavailable(RuntimeError):
    """bcc, kernel headers or privileges are missing; the message says what to do."""


def check_environment() -> None:
    """Raise :class:`BpfUnavailable` naming the missing piece (headers, bcc, root, mounts)."""
    if os.geteuid() != 0:
        raise BpfUnavailable("eBPF receivers need root (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)")
    release = platform.release()
    build = Path("/lib/modules") / release / "build"
    if not (build / "include").exists():
        raise BpfUnavailable(
            f"kernel headers for {release} not found at {build}: install linux-headers and link them "
            "(scripts/setup.sh does this), or mount the node's /lib/modules and /usr/src into the container"
        )
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        raise BpfUnavailable(
            "python bcc module not importable: apt-get install python3-bpfcc and run scripts/setup.sh"
        ) from exc


def load_bpf(src_file: Path, cflags: Sequence[str] = ()) -> Any:
    """Compile and load a ``.bpf.c`` file with bcc; parameters go in as ``-D`` cflags."""
    check_environment()
    from bcc import BPF

    try:
        return BPF(src_file=str(src_file).encode(), cflags=list(cflags))
    except Exception as exc:
        raise BpfUnavailable(f"failed to compile/load {src_file.name}: {exc}") from exc
