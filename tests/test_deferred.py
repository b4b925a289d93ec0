"""Deferred: items come out once their delay has passed, each once, in the order they were added."""

from __future__ import annotations

import time

from retina_otel.metrics.deferred import Deferred


def test_items_come_out_when_due_and_once() -> None:
    later: Deferred[str] = Deferred()
    assert later.due() == []
    later.add("a", 0.0)
    later.add("b", 0.05)
    later.add("c", 0.0)
    assert later.due() == ["a", "c"]
    assert later.due() == []
    time.sleep(0.06)
    assert later.due() == ["b"]
    assert later.due() == []
