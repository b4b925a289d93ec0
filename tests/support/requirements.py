"""What a test needs from the machine, and what happens when it is missing.

Under CI (``CI`` set to true/1/yes, as CI services do) a missing privilege or tool **fails** the test
that needs it, so a CI run cannot pass with tests unexecuted. Locally the test is skipped, with the
reason in pytest's summary (``-ra``). Kernel tests (``@pytest.mark.kernel``) need root, bcc with the
running kernel's headers, and :data:`KERNEL_TOOLS`; other tests call :func:`require_tool`.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import NoReturn

import pytest

__all__ = ["KERNEL_TOOLS", "in_ci", "kernel_problems", "require_tool", "unavailable"]

KERNEL_TOOLS = ("ip", "nft", "tc", "ping", "sysctl", "iperf3", "tcpdump", "taskset", "ethtool", "dnsmasq")
"""Programs the kernel tests run (scripts/setup.sh installs them)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@functools.cache
def kernel_problems() -> tuple[str, ...]:
    """Why kernel tests cannot run on this machine (empty: they can)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not root")
    missing = [tool for tool in KERNEL_TOOLS if shutil.which(tool) is None]
    if missing:
        problems.append(f"missing tools: {', '.join(missing)}")
    if not problems:
        from retina_otel.bpf import BpfUnavailable, check_environment

        try:
            check_environment()
        except BpfUnavailable as exc:
            problems.append(str(exc))
    return tuple(problems)


def unavailable(reason: str) -> NoReturn:
    """Fail the test under CI, skip it otherwise; ``reason`` says what is missing."""
    if in_ci():
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"{reason} (a failure under CI=true)")


def require_tool(name: str) -> str:
    """The path of program ``name``, or :func:`unavailable`."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed")
    return path
