"""docs/metrics.md's lost-events table ("the complete list of pairs the code can emit") lists every
(type, reason) pair the receivers and connectors count: literal ``count_lost("type", "reason")`` calls
and the reason tables that are forwarded in a loop."""

from __future__ import annotations

import re
from pathlib import Path

from retina_otel.receivers.packetparser.records import LOST_STATS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retina_otel"


def _source(rel: str) -> str:
    return (PACKAGE / rel).read_text()


def code_pairs() -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        pairs.update(re.findall(r"count_lost\(\s*\"(\w+)\",\s*\"(\w+)\"", path.read_text()))
    pairs.update(("packetparser", reason) for reason in LOST_STATS)
    dropreason = re.search(r"_LOST_REASONS = \(([^)]*)\)", _source("receivers/dropreason/receiver.py"))
    assert dropreason, "dropreason's lost reasons moved: teach this test where"
    pairs.update(("dropreason", r) for r in re.findall(r"\"(\w+)\"", dropreason.group(1)))
    for path in (PACKAGE / "receivers" / "dns").glob("*.py"):
        pairs.update(("dns", r) for r in re.findall(r"lost\[\"(\w+)\"\]", path.read_text()))
    pairs.update(("traces", r) for r in re.findall(r"_lost\(\"(\w+)\"", _source("traces/builder.py")))
    return pairs


def doc_pairs() -> set[tuple[str, str]]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    table = text.split("### Lost events", 1)[1].split("\n\n", 2)[2]
    pairs: set[tuple[str, str]] = set()
    for line in table.split("\n\n", 1)[0].splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for kind in re.findall(r"`([^`]+)`", cells[0]):
            pairs.update((kind, reason) for reason in re.findall(r"`([^`]+)`", cells[1]))
    return pairs


def test_every_lost_reason_is_documented() -> None:
    found = code_pairs()
    assert {("packetparser", "netlink_link_messages"), ("dns", "unanswered_query"),
            ("traces", "connection_table_full"), ("dropreason", "flow_map_full")} <= found  # fmt: skip
    missing = sorted(found - doc_pairs())
    assert not missing, f"docs/metrics.md's lost-events table lacks: {missing}"
