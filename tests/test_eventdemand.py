"""The agent's event demand: holders, listeners and the order of their notifications."""

from __future__ import annotations

import itertools
import threading

from retina_otel.eventdemand import EventDemand


def test_listeners_hear_the_current_state_then_each_change_between_none_and_some_holders() -> None:
    demand = EventDemand()
    heard: list[bool] = []
    unsubscribe = demand.subscribe(heard.append)
    assert heard == [False] and not demand.wanted
    with demand.hold():
        assert demand.wanted
        with demand.hold():  # a second holder changes nothing the listeners need to hear
            pass
        assert demand.wanted
    assert heard == [False, True, False] and not demand.wanted
    unsubscribe()
    with demand.hold():
        late: list[bool] = []
        demand.subscribe(late.append)
        assert late == [True]  # subscribing while held: told so at once
    assert heard == [False, True, False] and late == [True, False]


def test_a_failing_listener_neither_stops_the_others_nor_the_holder() -> None:
    demand = EventDemand()
    heard: list[bool] = []

    def broken(wanted: bool) -> None:
        if wanted:
            raise RuntimeError("listener bug")

    demand.subscribe(broken)
    demand.subscribe(heard.append)
    with demand.hold():
        pass
    assert heard == [False, True, False]


def test_concurrent_holders_leave_the_last_notification_matching_the_state() -> None:
    demand = EventDemand()
    heard: list[bool] = []
    demand.subscribe(heard.append)

    def hold_many() -> None:
        for _ in range(500):
            with demand.hold():
                pass

    threads = [threading.Thread(target=hold_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not demand.wanted and heard[-1] is False
    assert all(a != b for a, b in itertools.pairwise(heard))  # strictly alternating
