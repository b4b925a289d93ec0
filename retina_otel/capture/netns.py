"""Run work inside a named network namespace (``/run/netns/<name>``) from a throw-away thread.

The Job runs in the host network namespace and never needs this; it lets a capture target a named
namespace by hand (containerd's ``cni-...`` namespaces, the test sandbox's pods). Commands are
wrapped with ``ip netns exec``; Python code (the /proc walks) runs in a thread that ``setns(2)``s,
because /proc/thread-self/net and /proc/sys/net follow the calling thread's namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = ["NetnsError", "check_netns", "netns_args", "run_in_netns"]

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")


class NetnsError(RuntimeError):
    pass


def check_netns(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"network namespace name {name!r} is invalid")
    path = _NETNS_DIR / name
    if not path.exists():
        raise NetnsError(f"network namespace {name!r} does not exist (no {path})")
    return path


def netns_args(netns: str | None, args: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *args] if netns else list(args)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(netns: str | None, func: Callable[[], T]) -> T:
    """``func()`` in ``netns`` (or here when ``None``); the worker thread ends with the call."""
    if not netns:
        return func()
    path = check_netns(netns)
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                result.append(func())
            finally:
                _setns(own)
        except BaseException as exc:
            error.append(exc)
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=worker, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
