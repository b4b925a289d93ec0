"""The operator's per-object locks: exclusive per key, and gone once nobody holds or waits for them
(pod churn leaves no lock behind)."""

from __future__ import annotations

import threading
import time

from retina_otel.controller.keyedlocks import KeyedLocks


def test_churn_leaves_no_lock_behind() -> None:
    locks = KeyedLocks()
    for i in range(10_000):
        with locks.hold("ns", f"pod/p-{i}"):
            assert len(locks) == 1
    assert len(locks) == 0


def test_one_holder_per_key_and_waiters_keep_it() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap: list[bool] = []

    def worker(tag: str) -> None:
        with locks.hold("ns", "capture-a"):
            overlap.append(bool(inside))
            inside.append(tag)
            time.sleep(0.02)
            inside.remove(tag)

    with locks.hold("ns", "capture-a"):
        threads = [threading.Thread(target=worker, args=(str(i),)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        assert not inside and len(locks) == 1  # all four wait on the one lock
        with locks.hold("ns", "capture-b"):  # another key is independent
            assert len(locks) == 2
    for t in threads:
        t.join(timeout=5)
    assert overlap == [False] * 4
    assert len(locks) == 0
