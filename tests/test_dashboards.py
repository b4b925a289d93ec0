"""Grafana dashboards in the chart: valid JSON, well-formed panels, and PromQL that uses only metric
names the agent exports.

The expected names come from :func:`expected_metric_names`. Without an argument it gathers them
statically (metric-name literals in the package plus the feature contract,
tests/fixtures/metric_contract.txt); given the text of a real ``/metrics`` scrape of the agent it uses
exactly the names in that scrape, so a live test can call ``check_dashboards(expected_metric_names(scrape_text))``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "charts" / "retina-otel" / "dashboards"
CONTRACT = ROOT / "tests" / "fixtures" / "metric_contract.txt"

PREFIX = "networkobservability_"
CONTROL_PREFIX = "controlplane_networkobservability_"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_NAME_LITERAL = re.compile(r"""["']((?:controlplane_)?networkobservability_[a-z0-9_]+)["']""")
_ADV_LITERAL = re.compile(r"""["'](adv_[a-z0-9_]+)["']""")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)")

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "le",
}


# -- expected names ---------------------------------------------------------------------------------------


def names_from_scrape(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition (what a live scrape of the agent returns)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            if match:
                names.add(match.group(1))
    return names


def names_from_code(package: Path = ROOT / "retina_otel") -> set[str]:
    """Metric-family names spelled in the package (full names, and ``adv_*`` names the flowmetrics
    processor prefixes)."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        text = path.read_text()
        names.update(_NAME_LITERAL.findall(text))
        names.update(PREFIX + n for n in _ADV_LITERAL.findall(text))
    return names


def names_from_contract(path: Path = CONTRACT) -> set[str]:
    """The metric names of the feature contract (tests/fixtures/metric_contract.txt, one a line)."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def expected_metric_names(scrape_text: str | None = None) -> set[str]:
    """The names a dashboard may query: a live scrape's, or the static union of code and contract.

    Statically, histogram families may also be queried with ``_bucket``/``_sum``/``_count``.
    """
    if scrape_text is not None:
        return names_from_scrape(scrape_text)
    base = names_from_code() | names_from_contract()
    return base | {n + s for n in base for s in HISTOGRAM_SUFFIXES}


# -- PromQL -------------------------------------------------------------------------------------------------


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label matchers, strings, ranges, grouping removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        if text[match.start() - 1: match.start()] == "$" or re.fullmatch(r"e\d*", word):
            continue  # a Grafana variable, or the exponent of 1e-9
        names.add(word)
    return names


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(doc):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*[a-z_]+\)", query)
            yield f"variable {var['name']!r}", inner.group(1) if inner else query


def check_dashboards(allowed: set[str]) -> list[str]:
    """Problems: queries naming metrics outside ``allowed``."""
    problems = []
    for path in dashboards():
        doc = json.loads(path.read_text())
        for where, expr in queries(doc):
            unknown = metric_names_in(expr) - allowed
            if unknown:
                problems.append(f"{path.name}: {where}: {sorted(unknown)} in {expr}")
    return problems


# -- tests --------------------------------------------------------------------------------------------------


def test_dashboards_exist() -> None:
    names = {p.stem for p in dashboards()}
    assert {"cluster", "namespace", "pod", "dns", "drops", "retransmissions", "apiserver"} <= names


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["uid"] and len(doc["uid"]) <= 40
    assert doc["title"].startswith("retina-otel / ")
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    var_names = {v["name"] for v in doc["templating"]["list"]}
    assert "datasource" in var_names
    for panel in panels(doc):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= var_names, f"{panel['title']}: undefined variables {used - var_names}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert path.read_text() == json.dumps(doc, indent=2) + "\n", "tidy JSON (regenerate with generate.py)"


def test_uids_are_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in dashboards()]
    assert len(uids) == len(set(uids))


def test_queries_use_only_exported_metric_names() -> None:
    allowed = expected_metric_names()
    assert PREFIX + "forward_count" in allowed
    assert check_dashboards(allowed) == []


def test_dashboards_cover_the_topics() -> None:
    used = set()
    for path in dashboards():
        for _, expr in queries(json.loads(path.read_text())):
            used |= metric_names_in(expr)
    for name in ("forward_count", "forward_bytes", "drop_count", "adv_forward_bytes", "adv_drop_count",
                 "dns_request_count", "adv_dns_response_count", "adv_tcpretrans_count",
                 "adv_node_apiserver_latency_bucket", "adv_node_apiserver_no_response", "tcp_connection_stats"):
        assert PREFIX + name in used, name


def test_checker_catches_unknown_names() -> None:
    """The checker itself: a wrong name is reported, a live scrape's names are read exactly."""
    expr = 'sum by (podname) (rate(networkobservability_adv_forward_count_total{podname=~"$pod"}[5m])) / up'
    assert metric_names_in(expr) == {"networkobservability_adv_forward_count_total", "up"}
    scrape = (
        "# HELP networkobservability_forward_count Forwarded packets\n"
        "# TYPE networkobservability_forward_count counter\n"
        'networkobservability_forward_count{direction="ingress"} 12\n'
        'networkobservability_adv_node_apiserver_latency_bucket{le="1.0"} 3\n'
    )
    assert expected_metric_names(scrape) == {
        "networkobservability_forward_count", "networkobservability_adv_node_apiserver_latency_bucket"}
    assert metric_names_in(expr) - expected_metric_names(scrape)


def test_the_agent_exports_every_metric_of_the_contract() -> None:
    contract = names_from_contract()
    assert len(contract) >= 30
    assert contract <= names_from_code(), sorted(contract - names_from_code())
