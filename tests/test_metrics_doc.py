"""docs/metrics.md lists exactly the metric families the code can declare.

Names are collected statically from ``retina_otel/**/*.py``:

* string literals that are a whole family name (``"networkobservability_forward_count"``);
* f-string templates (``f"networkobservability_{kind}_{suffix}"``), expanded with the table below;
  every substituted value must itself appear as a string literal in that file, and a template the
  table does not know fails the test, so a new one cannot slip by;
* bare prefix constants (``PREFIX = "networkobservability_"``) are only allowed where the test knows
  how names are built from them: flowmetrics' :class:`AdvMetric` table, imported here.
"""

from __future__ import annotations

import re
from pathlib import Path

from retina_otel.processors.flowmetrics.spec import AdvMetric

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retina_otel"
DOC = ROOT / "docs" / "metrics.md"

_NAME = r"(?:controlplane_)?networkobservability_[a-z0-9_]*"
# A plain (non-f) string literal that is exactly a name or a prefix: no word character before the quote.
LITERAL = re.compile(rf"(?<![\w])([\"'])({_NAME})\1")
TEMPLATE = re.compile(rf"(?<![\w])[fF]([\"'])({_NAME}\{{[^\"']*)\1")
DOC_TOKEN = re.compile(rf"(?<![\w]){_NAME}")

# f-string template -> (file, the expansions of its placeholders)
TEMPLATES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "networkobservability_{kind}_{suffix}": (
        "processors/flowmetrics/aggregate.py",
        {"kind": ("forward", "drop"), "suffix": ("count", "bytes")},
    ),
}
# Where a bare prefix constant may live (names built from it come from AdvMetric).
PREFIX_FILES = {"processors/flowmetrics/spec.py"}


def _expand(template: str, values: dict[str, tuple[str, ...]]) -> set[str]:
    names = {template}
    for key, options in values.items():
        names = {n.replace("{" + key + "}", v) for n in names for v in options}
    assert not any("{" in n for n in names), f"unexpanded placeholder in {template!r}"
    return names


def code_names() -> set[str]:
    names: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        for _quote, name in LITERAL.findall(text):
            if name.endswith("_"):
                assert rel in PREFIX_FILES, f"{rel}: prefix literal {name!r}: teach tests/test_metrics_doc.py its names"
            else:
                names.add(name)
        for _quote, template in TEMPLATE.findall(text):
            assert template in TEMPLATES, f"{rel}: metric name template {template!r} unknown to this test"
            where, values = TEMPLATES[template]
            assert where == rel, f"template {template!r} moved from {where} to {rel}"
            literals = {v for _q, v in re.findall(r"([\"'])([a-z0-9_]+)\1", text)}
            for options in values.values():
                missing = set(options) - literals
                assert not missing, f"{rel}: expansions {sorted(missing)} of {template!r} not in that file"
            names |= _expand(template, values)
    names |= {m.full_name for m in AdvMetric}
    return names


def doc_names() -> set[str]:
    found = {n for n in DOC_TOKEN.findall(DOC.read_text()) if not n.endswith("_")}
    return found


def test_code_names_are_collected() -> None:
    names = code_names()
    # A sanity floor: the collection itself works (literal, template, prefix table, control plane).
    for expected in (
        "networkobservability_forward_count",
        "networkobservability_conntrack_bytes_rx",
        "networkobservability_drop_bytes",
        "networkobservability_adv_tcpflags_count",
        "controlplane_networkobservability_lost_events_counter",
        "controlplane_networkobservability_parsed_packets_counter",
    ):
        assert expected in names
    assert len(names) >= 40


def test_every_code_metric_is_documented() -> None:
    missing = sorted(code_names() - doc_names())
    assert not missing, f"docs/metrics.md does not document: {missing}"


def test_every_documented_metric_exists() -> None:
    names = code_names()
    unknown = sorted(
        n
        for n in doc_names()
        if n not in names and not (n.rsplit("_", 1)[-1] in ("bucket", "sum", "count") and n.rsplit("_", 1)[0] in names)
    )
    assert not unknown, f"docs/metrics.md names metrics the code does not declare: {unknown}"
