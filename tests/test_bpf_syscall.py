"""The bpf(2) system call number: one table per architecture, checked against the kernel's own headers,
and the call itself on this machine."""

from __future__ import annotations

import ctypes
import errno
import platform
import re
from pathlib import Path

import pytest

from retina_otel.bpf.syscall import SYSCALL_NUMBERS, bpf, syscall_number

_HEADERS = {
    # arm64 takes its numbers from the generic table; x86_64 has its own
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
    "x86_64": Path(f"/usr/include/{platform.machine()}-linux-gnu/asm/unistd_64.h"),
}


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_table_matches_the_kernel_headers(machine: str) -> None:
    header = _HEADERS[machine]
    if machine == "x86_64" and platform.machine() != "x86_64":
        pytest.skip("the x86_64 uapi header is only installed on x86_64")
    found = re.search(r"#define __NR_bpf\s+(\d+)", header.read_text())
    assert found, f"__NR_bpf not in {header}"
    assert SYSCALL_NUMBERS[machine] == int(found.group(1)) == syscall_number(machine)


def test_unsupported_architecture_is_named() -> None:
    with pytest.raises(OSError, match="'riscv64' is not supported") as info:
        syscall_number("riscv64")
    assert info.value.errno == errno.ENOSYS


class _Empty(ctypes.Structure):
    _fields_ = [("pad", ctypes.c_uint64)]


def test_the_call_reaches_bpf() -> None:
    """An unknown command: the bpf syscall answers EINVAL (a wrong number would give ENOSYS or another
    system call's error), without privileges too."""
    with pytest.raises(OSError) as info:
        bpf(10_000, _Empty(), "BPF_UNKNOWN")
    assert info.value.errno in (errno.EINVAL, errno.EPERM)
    assert "BPF_UNKNOWN" in str(info.value)
