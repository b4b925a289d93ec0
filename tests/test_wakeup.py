"""The wake pipe the select/poll loops (link watcher, dns and packetparser readers) sleep on."""

from __future__ import annotations

import select
import threading
import time

from retina_otel.wakeup import Wakeup


def test_wake_ends_a_poll_at_once_and_close_is_idempotent() -> None:
    wakeup = Wakeup()
    poller = select.poll()
    poller.register(wakeup.fileno(), select.POLLIN)
    assert poller.poll(0) == []  # nothing yet
    threading.Timer(0.05, wakeup.wake).start()
    began = time.monotonic()
    assert poller.poll(10_000)  # woken, not timed out
    assert time.monotonic() - began < 5
    wakeup.wake()  # again: still readable, never blocks
    wakeup.close()
    wakeup.close()  # a second close touches no descriptor
    wakeup.wake()  # after close: nothing to write to, no error
