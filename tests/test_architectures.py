"""The supported architectures are stated once in code (the bpf(2) table) and agree with the Dockerfile,
docs/image.md and the README."""

from __future__ import annotations

import re
from pathlib import Path

from retina_otel.bpf.syscall import SYSCALL_NUMBERS

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = {"x86_64": "amd64", "aarch64": "arm64"}


def test_dockerfile_builds_for_the_supported_architectures() -> None:
    text = (ROOT / "Dockerfile").read_text()
    case = re.search(r"^\s+([a-z0-9|]+)\) ;; \\$", text, re.M)
    assert case, "the Dockerfile checks TARGETARCH"
    assert set(case.group(1).split("|")) == {DEBIAN[m] for m in SYSCALL_NUMBERS if m in DEBIAN}
    assert "--platform linux/amd64,linux/arm64" in text


def test_docs_state_them() -> None:
    image = (ROOT / "docs" / "image.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for machine, debian in DEBIAN.items():
        assert machine in SYSCALL_NUMBERS
        assert f"linux/{debian} ({machine})" in image
        assert f"({debian})" in readme and machine in readme
