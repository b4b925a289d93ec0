"""The agent as users run it: ``retina-otel agent`` with the embedded default config, on this host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from retina_otel.sandbox import Pod, Sandbox
from retina_otel.testing import wait_for

METRICS = "http://127.0.0.1:10093/metrics"
READYZ = "http://127.0.0.1:18081/readyz"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def _tc_filters(dev: str) -> str:
    out = []
    for direction in ("ingress", "egress"):
        proc = subprocess.run(["tc", "filter", "show", "dev", dev, direction], capture_output=True, text=True)
        out.append(proc.stdout)
    return "\n".join(out)


def _tcx_programs(ifindex: int) -> list[str]:
    from retina_otel.bpf.tcx import tcx_query

    return [e.prog_name for hook in ("ingress", "egress") for e in tcx_query(ifindex, hook)]  # type: ignore[arg-type]


def _packetparser_attached(pod: Pod) -> bool:
    """packetparser's programs on the pod's veth: TCX links (the default on Linux >= 6.6) or clsact filters."""
    return any(n.startswith("pp_") for n in _tcx_programs(pod.host_ifindex)) or "retina_otel" in _tc_filters(
        pod.host_veth
    )


def _start_agent(extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "retina_otel", "agent", *(args or [])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return proc.returncode, output


@pytest.mark.kernel
def test_default_agent_observes_traffic_and_shuts_down_clean(sandbox: Sandbox) -> None:
    a = sandbox.add_pod("a")
    b = sandbox.add_pod("b")
    foreign = subprocess.run(["tc", "qdisc", "replace", "dev", a.host_veth, "clsact"], capture_output=True, text=True)
    assert foreign.returncode == 0, foreign.stderr
    # A filter the agent did not add must survive its shutdown.
    subprocess.run(
        [
            "tc",
            "filter",
            "add",
            "dev",
            a.host_veth,
            "ingress",
            "prio",
            "7",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "classid",
            "1:1",
        ],
        check=True,
    )
    proc = _start_agent()
    try:
        assert wait_for(lambda: _get(READYZ)[0] == 200 or proc.poll() is not None, timeout=120), _get(READYZ)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        _status, body = _get(READYZ)
        detail: dict[str, Any] = json.loads(body)
        assert detail["ready"] is True
        attached = wait_for(lambda: _packetparser_attached(a), timeout=10)
        assert attached, (_tc_filters(a.host_veth), _tcx_programs(a.host_ifindex))
        for _ in range(50):
            a.run(["ping", "-c", "1", "-W", "1", b.ipv4], check=False)
        status, text = _get(METRICS)
        assert status == 200
        assert "networkobservability_forward_count{" in text
        assert "networkobservability_forward_count_total" not in text
    finally:
        rc, output = _stop(proc)
    assert rc == 0, output[-3000:]
    filters = _tc_filters(a.host_veth)
    assert "u32" in filters, filters
    assert "bpf" not in filters, filters
    assert not _packetparser_attached(a), _tcx_programs(a.host_ifindex)
    leftover_pins = [p.name for p in Path("/sys/fs/bpf").iterdir() if "retina" in p.name]
    assert not leftover_pins


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text(
        "receivers: {synthetic: {interval: never}}\n"
        "exporters: {debug: {}}\n"
        "service: {pipelines: {logs: {receivers: [synthetic], exporters: [debug]}}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "retina_otel", "agent", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "receivers.synthetic.interval" in proc.stderr


def test_sigterm_exits_zero_with_synthetic_pipeline(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "receivers: {synthetic: {interval: 0.1}}\n"
        "exporters: {debug: {verbosity: basic}, prometheus: {endpoint: '127.0.0.1:0'}}\n"
        "service:\n"
        "  telemetry: {health: {endpoint: '127.0.0.1:0'}}\n"
        "  pipelines:\n"
        "    logs: {receivers: [synthetic], exporters: [debug]}\n"
        "    metrics: {receivers: [synthetic], exporters: [prometheus]}\n"
    )
    proc = _start_agent(args=["--config", str(config)])
    time.sleep(3)
    rc, output = _stop(proc)
    assert rc == 0, output
    assert "synthetic: 100 records" in output
    assert "agent stopped" in output
