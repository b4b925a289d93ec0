"""One source for the CRDs: the chart's crds/retina.sh.yaml is retina_otel.crds.render_crds() verbatim.

Regenerate after changing retina_otel/crds: ``.venv/bin/python tests/test_chart_crds.py --write``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from retina_otel.crds import crd_names, render_crds

CHART_CRDS = Path(__file__).resolve().parents[1] / "charts" / "retina-otel" / "crds" / "retina.sh.yaml"
HEADER = (
    "# Generated from retina_otel.crds.render_crds() (`retina-otel crds`); do not edit.\n"
    "# Regenerate: .venv/bin/python tests/test_chart_crds.py --write\n"
)


def expected() -> str:
    return HEADER + render_crds()


def test_chart_crds_equal_rendered() -> None:
    assert CHART_CRDS.read_text() == expected(), (
        "charts/retina-otel/crds/retina.sh.yaml is stale: run .venv/bin/python tests/test_chart_crds.py --write"
    )


def test_chart_ships_every_crd() -> None:
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(CHART_CRDS.read_text()) if d]
    assert sorted(names) == sorted(crd_names())


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        CHART_CRDS.write_text(expected())
        print(f"wrote {CHART_CRDS}")
    else:
        sys.exit("usage: tests/test_chart_crds.py --write")
