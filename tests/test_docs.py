"""The generated parts of the docs match the code."""

from __future__ import annotations

from pathlib import Path

from retina_otel.configdoc import BEGIN, END, render_reference

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    embedded = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert embedded == render_reference().strip(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m retina_otel.configdoc --write`"
    )
