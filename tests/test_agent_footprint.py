"""What the agent process carries: no dependency its config does not use, and no compiler leftovers.

Each check runs in a fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from retina_otel.config import default_config_text

# Needed only by `retina-otel operator` / `capture run` (kopf, cloud SDKs) or by a Kubernetes source.
NOT_IN_AGENT = ("kopf", "kubernetes", "azure", "boto3", "botocore", "retina_otel.controller", "retina_otel.capture")
# Needed only with an otlp exporter (OTEL_EXPORTER_OTLP_ENDPOINT adds one to the default config).
NOT_WITHOUT_OTLP = ("opentelemetry", "grpc", "google.protobuf")

_REPORT = textwrap.dedent(
    """
    import json, sys
    def report(**extra):
        watched = json.loads(sys.argv[1])
        present = sorted(w for w in watched if any(m == w or m.startswith(w + ".") for m in sys.modules))
        print(json.dumps({"present": present, **extra}))
    """
)


def _run(code: str, watched: tuple[str, ...], config: Path | None = None, timeout: float = 120) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    argv = [sys.executable, "-c", _REPORT + textwrap.dedent(code), json.dumps(watched), str(config or "")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_and_default_agent_build_import_only_what_the_config_uses() -> None:
    result = _run(
        """
        import contextlib, io
        from retina_otel.cli import build_parser, main
        from retina_otel.config import load_config
        from retina_otel.service import Agent
        build_parser().format_help()
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["validate"]) == 0
            assert main(["agent", "--print-default-config"]) == 0
        Agent(load_config(None))
        report()
        """,
        NOT_IN_AGENT + NOT_WITHOUT_OTLP,
    )
    assert result["present"] == []


def test_optional_commands_still_load_their_modules_when_used() -> None:
    result = _run(
        """
        import contextlib, io
        from retina_otel.cli import build_parser
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            build_parser().parse_args(["capture", "run", "--help"])
        report()
        """,
        ("retina_otel.capture",),
    )
    assert result["present"] == ["retina_otel.capture"]


@pytest.mark.kernel
@pytest.mark.slow
def test_started_default_agent_imports_no_unused_dependency_and_keeps_no_compiler_heap(tmp_path: Path) -> None:
    """Every receiver of the default config compiled and running: the unused dependencies are still
    absent, and the anonymous memory (heap) stays far below what the compiles left before
    ``load_bpf`` released it (about 210 MB then, about 70 MB now)."""
    config = tmp_path / "agent.yaml"
    config.write_text(default_config_text().replace("0.0.0.0:10093", f"127.0.0.1:{_free_port()}"))
    result = _run(
        """
        from retina_otel.config import load_config
        from retina_otel.service import Agent
        agent = Agent(load_config(sys.argv[2]))
        try:
            agent.start()
            failed = agent.readiness()[1].get("failed", [])
            rollup = dict(l.split(":", 1) for l in open("/proc/self/smaps_rollup") if ":" in l)
            anonymous_mb = int(rollup["Anonymous"].split()[0]) // 1024
        finally:
            agent.shutdown()
        report(failed=failed, anonymous_mb=anonymous_mb)
        """,
        NOT_IN_AGENT + NOT_WITHOUT_OTLP,
        config,
    )
    assert result["failed"] == []
    assert result["present"] == []
    assert result["anonymous_mb"] <= 120, result


def test_allocator_tuned_on_glibc() -> None:
    """The agent fixes glibc's mmap threshold and arena count (churn peaks go back to the kernel)."""
    import platform

    from retina_otel.allocator import tune_for_daemon

    assert platform.libc_ver()[0] == "glibc"
    assert tune_for_daemon() is True
