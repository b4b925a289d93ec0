"""One source for the CRDs: the chart's crds/retina.sh.yaml is retina_otel.crds.render_crds() verbatim, and
crds/kopf.dev.yaml (kopf's peering CRDs, for the operator's leader election) is
retina_otel.controller.peering.render_peering_crds().

Regenerate after changing retina_otel/crds: ``.venv/bin/python tests/test_chart_crds.py --write``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from retina_otel.controller.peering import render_peering_crds
from retina_otel.crds import crd_names, render_crds

CHART_CRDS = Path(__file__).resolve().parents[1] / "charts" / "retina-otel" / "crds" / "retina.sh.yaml"
PEERING_CRDS = CHART_CRDS.with_name("kopf.dev.yaml")
PEERING_HEADER = (
    "# kopf's peering CRDs (leader election of the operator), from retina_otel.controller.peering; do not edit.\n"
    "# The same as kopf's own peering.yaml; Helm leaves CRDs that already exist alone.\n"
    "# Regenerate: .venv/bin/python tests/test_chart_crds.py --write\n"
)
HEADER = (
    "# Generated from retina_otel.crds.render_crds() (`retina-otel crds`); do not edit.\n"
    "# Regenerate: .venv/bin/python tests/test_chart_crds.py --write\n"
)


def expected() -> str:
    return HEADER + render_crds()


def expected_peering() -> str:
    return PEERING_HEADER + render_peering_crds()


def test_chart_crds_equal_rendered() -> None:
    assert CHART_CRDS.read_text() == expected(), (
        "charts/retina-otel/crds/retina.sh.yaml is stale: run .venv/bin/python tests/test_chart_crds.py --write"
    )


def test_chart_peering_crds_equal_rendered() -> None:
    assert PEERING_CRDS.read_text() == expected_peering(), (
        "charts/retina-otel/crds/kopf.dev.yaml is stale: run .venv/bin/python tests/test_chart_crds.py --write"
    )


def test_peering_crds_match_kopf() -> None:
    """kopf finds the peering resources by group, version and plural, and patches ``status`` on the object."""
    docs = [d for d in yaml.safe_load_all(PEERING_CRDS.read_text()) if d]
    got = {(d["spec"]["group"], d["spec"]["versions"][0]["name"], d["spec"]["names"]["plural"],
            d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs}
    assert got == {("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", "Cluster"),
                   ("kopf.dev", "v1", "kopfpeerings", "KopfPeering", "Namespaced")}
    from kopf._cogs.structs import references  # what kopf looks the peering resources up by

    for selector in (references.CLUSTER_PEERINGS_K, references.NAMESPACED_PEERINGS_K):
        assert any((selector.group, selector.version, selector.any_name) == (g, v, p) for g, v, p, _, _ in got)
    for doc in docs:
        (version,) = doc["spec"]["versions"]
        assert "subresources" not in version  # kopf writes status with a plain patch of the object
        assert version["schema"]["openAPIV3Schema"]["properties"]["status"]["x-kubernetes-preserve-unknown-fields"]


def test_chart_ships_every_crd() -> None:
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(CHART_CRDS.read_text()) if d]
    assert sorted(names) == sorted(crd_names())


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        CHART_CRDS.write_text(expected())
        PEERING_CRDS.write_text(expected_peering())
        print(f"wrote {CHART_CRDS} and {PEERING_CRDS}")
    else:
        sys.exit("usage: tests/test_chart_crds.py --write")
