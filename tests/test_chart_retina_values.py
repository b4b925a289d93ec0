"""The chart README's "Coming from Retina's chart" table names only values that exist: every value path of
its "here" column is a key of values.yaml (or, under ``config``, a field of that receiver's config)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from retina_otel.registry import get_factory

CHART = Path(__file__).resolve().parents[1] / "charts" / "retina-otel"
NOT_VALUES = {"-n"}  # `-n`: helm's namespace flag, not a value


def _table() -> list[list[str]]:
    text = (CHART / "README.md").read_text()
    section = text.split("## Coming from Retina's chart", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Retina value")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def _expand(path: str, values: dict[str, Any]) -> list[str]:
    """``a.{b,c}`` -> ``a.b``, ``a.c``; ``agent.receivers.<name>.x`` -> one path per receiver."""
    brace = re.search(r"\{([^}]*)\}", path)
    if brace:
        return [q for alt in brace.group(1).split(",") for q in _expand(path.replace(brace.group(0), alt, 1), values)]
    if "<name>" in path:
        return [path.replace("<name>", name) for name in values["agent"]["receivers"]]
    return [path]


def _resolves(path: str, values: dict[str, Any]) -> bool:
    node: Any = values
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part == "config" and parts[i - 2 : i - 1] == ["receivers"]:
            factory = get_factory("receiver", parts[i - 1])
            return factory is not None and all(f in factory.config_model.model_fields for f in parts[i + 1 :])
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_value_of_the_retina_mapping_exists() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = _table()
    assert len(rows) >= 30, "the table was not found"
    checked: list[str] = []
    missing: list[str] = []
    for row in rows:
        assert len(row) == 5, row
        for span in re.findall(r"`([^`]+)`", row[2]):
            if "*" in span or span in NOT_VALUES:
                continue
            for path in _expand(span, values):
                checked.append(path)
                if not _resolves(path, values):
                    missing.append(f"{row[0]} -> {path}")
    assert not missing, f"the Retina mapping names values the chart does not have: {missing}"
    for value in ("agent.podLevel", "agent.remoteContext", "agent.enableAnnotations", "agent.dataAggregationLevel",
                  "agent.metricsInterval", "agent.receivers.dns.enabled", "clusterName"):
        assert value in checked, value
