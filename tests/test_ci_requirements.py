"""Tests cannot pass by not running: pytest itself, in a subprocess, on a kernel test and a plain one,
with a tool really missing (a PATH without it) and without privileges (as user nobody): under CI=true
the kernel test fails the run, locally it is skipped with the reason in the summary."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.requirements import KERNEL_TOOLS, kernel_problems

ROOT = Path(__file__).resolve().parents[1]

_TESTS = '''
import pytest

@pytest.mark.kernel
def test_needs_the_kernel():
    pass

def test_plain():
    pass
'''


@pytest.fixture(scope="module")
def test_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:  # not under pytest's 0700 tmp_path: user nobody reads it
        os.chmod(tmp, 0o755)
        path = Path(tmp) / "test_probe.py"
        path.write_text(_TESTS)
        path.chmod(0o644)
        yield path


def _pytest(test_file: Path, *, ci: bool, path: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}
    env.update(PATH=path, PYTHONDONTWRITEBYTECODE="1", **({"CI": "true"} if ci else {}))
    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
           "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", str(test_file)]  # fmt: skip
    if user is not None:
        # Unprivileged (euid != 0), but still able to read the checkout and its venv wherever they are: a
        # clone in a 0700 directory (mktemp -d) is closed to user nobody otherwise.
        read = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *read, *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


NO_TOOLS = os.path.dirname(sys.executable)  # python, and none of the kernel tests' programs
NOBODY = 65534


@pytest.mark.kernel
def test_missing_tool_fails_under_ci(test_file: Path) -> None:
    assert not any(os.path.exists(os.path.join(NO_TOOLS, t)) for t in KERNEL_TOOLS)
    run = _pytest(test_file, ci=True, path=NO_TOOLS)
    assert run.returncode != 0, run.stdout
    assert "cannot run in CI: kernel test: missing tools: ip, nft" in run.stdout
    assert "1 passed, 1 error" in run.stdout


@pytest.mark.kernel
def test_missing_tool_skips_locally_with_the_reason(test_file: Path) -> None:
    run = _pytest(test_file, ci=False, path=NO_TOOLS)
    assert run.returncode == 0, run.stdout
    assert "SKIPPED" in run.stdout and "missing tools: ip, nft" in run.stdout
    assert "(a failure under CI=true)" in run.stdout and "1 passed, 1 skipped" in run.stdout


@pytest.mark.kernel
def test_no_privilege_fails_under_ci(test_file: Path) -> None:
    run = _pytest(test_file, ci=True, path=os.environ["PATH"], user=NOBODY)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "cannot run in CI: kernel test: not root" in run.stdout
    assert "1 passed, 1 error" in run.stdout


@pytest.mark.kernel
def test_no_privilege_skips_locally(test_file: Path) -> None:
    run = _pytest(test_file, ci=False, path=os.environ["PATH"], user=NOBODY)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "kernel test: not root" in run.stdout and "1 passed, 1 skipped" in run.stdout


@pytest.mark.kernel
def test_everything_present_runs_it(test_file: Path) -> None:
    assert kernel_problems() == ()
    run = _pytest(test_file, ci=True, path=os.environ["PATH"])
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout
