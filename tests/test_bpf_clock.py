"""The kernel tick rate the packetparser's clock is built on."""

from __future__ import annotations

from pathlib import Path

import pytest

from retina_otel.bpf.clock import _hz_from_config, _hz_from_timer_list, kernel_hz, wall_offset_ns


@pytest.mark.kernel  # /proc/timer_list is readable by root only
def test_kernel_hz_from_config_and_measured_agree() -> None:
    configured = _hz_from_config(Path("/proc/config.gz"))
    measured = _hz_from_timer_list(Path("/proc/timer_list"), 0.3)
    assert measured in (100, 250, 300, 1000)
    assert configured in (None, measured)
    assert kernel_hz() == measured


def test_missing_sources_give_none(tmp_path: Path) -> None:
    assert _hz_from_config(tmp_path / "absent.gz") is None
    assert _hz_from_timer_list(tmp_path / "absent", 0.0) is None


def test_wall_offset_is_epoch_minus_monotonic() -> None:
    import time

    assert abs(wall_offset_ns() + time.monotonic_ns() - time.time_ns()) < 50_000_000
