"""Whether anything in the agent wants each flow event as a record of its own, right now.

Most consumers of flow records only sum each flow's records (flowmetrics), so packetparser may write
one record per connection close and report interval instead of one per connection event (its
``report_rule``). The observer reads each record, but only matters while a client follows live flows
(``observe --follow``, Hubble UI): between clients its ring only keeps history. It holds the agent's
:class:`EventDemand` while a client follows; receivers created with it
(:attr:`~retina_otel.component.CreateSettings.event_demand`) write event records only while it is held.
Counts are the same under either rule, so switching loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

__all__ = ["EventDemand"]

log = logging.getLogger(__name__)

Listener = Callable[[bool], None]


class EventDemand:
    """A count of holders and the listeners told when it changes between none and some.

    Listeners run on the thread that changes the state, one change at a time, in the order of the
    changes (a lock is held around each notification, so a release cannot overtake the hold before it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._listeners: list[Listener] = []

    @property
    def wanted(self) -> bool:
        with self._lock:
            return self._holders > 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(wanted)`` now, with the current state, and on every change from then on (no
        change can fall between the two); returns the unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)
            listener(self._holders > 0)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Want event records for the duration of the ``with`` block."""
        self._change(+1)
        try:
            yield
        finally:
            self._change(-1)

    def _change(self, delta: int) -> None:
        with self._lock:
            before = self._holders > 0
            self._holders += delta
            after = self._holders > 0
            if before == after:
                return
            for listener in list(self._listeners):
                try:
                    listener(after)
                except Exception:
                    log.exception("event demand listener failed")
