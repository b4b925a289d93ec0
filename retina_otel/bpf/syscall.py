"""The raw ``bpf(2)`` system call, for the commands bcc does not offer (test runs, TCX links, queries).

Callers build the command's ``bpf_attr`` member as a ctypes Structure; this module only makes the call
and turns a failure into an :class:`OSError` that names the command.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["bpf"]

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_BPF = 321  # x86_64


def bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """``bpf(cmd, &attr, sizeof(attr))``: the kernel's non-negative result, or OSError("<what>: ...")."""
    res = int(_libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res
