"""The raw ``bpf(2)`` system call, for the commands bcc does not offer (test runs, TCX links, queries).

Callers build the command's ``bpf_attr`` member as a ctypes Structure (its layout is the same on every
architecture: the kernel's UAPI uses fixed-size, 8-byte aligned fields); this module only makes the
call and turns a failure into an :class:`OSError` that names the command.

The system call's number is per architecture: :data:`SYSCALL_NUMBERS` is the one table of them
(x86_64 from ``arch/x86/entry/syscalls/syscall_64.tbl``, arm64 from the generic table
``include/uapi/asm-generic/unistd.h`` that arm64 uses). Another machine gets :class:`OSError` on the
first call, naming the architecture.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

__all__ = ["SYSCALL_NUMBERS", "bpf", "syscall_number"]

SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280, "arm64": 280}
"""``__NR_bpf`` by ``platform.machine()``: the architectures the agent supports."""

_libc = ctypes.CDLL(None, use_errno=True)


def syscall_number(machine: str | None = None) -> int:
    """``__NR_bpf`` of ``machine`` (default: this one), or OSError(ENOSYS) naming an unsupported one."""
    arch = machine or platform.machine()
    try:
        return SYSCALL_NUMBERS[arch]
    except KeyError:
        raise OSError(
            errno.ENOSYS, f"bpf(2): architecture {arch!r} is not supported (supported: x86_64, aarch64)"
        ) from None


def bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """``bpf(cmd, &attr, sizeof(attr))``: the kernel's non-negative result, or OSError("<what>: ...")."""
    res = int(_libc.syscall(syscall_number(), cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res
