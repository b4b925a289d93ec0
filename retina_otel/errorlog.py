"""Logging an error that repeats (a broken exporter, a map that keeps failing) without flooding the log.

:class:`RepeatedError` logs the first ``first`` occurrences with their traceback, then every
``every``-th, each time with the count so far, the way the flowmetrics processor logs failed batches.
A loop that fails on every turn (every 0.1 s) thus writes 5 lines and then one every ~100 s.
"""

from __future__ import annotations

import logging

__all__ = ["RepeatedError"]


class RepeatedError:
    def __init__(self, log: logging.Logger, message: str, *, first: int = 5, every: int = 1000) -> None:
        self._log = log
        self._message = message
        self._first = first
        self._every = every
        self.count = 0

    def exception(self) -> None:
        """Call from an ``except`` block: count it, and log it (with the traceback) when it is due."""
        self.count += 1
        if self.count <= self._first or self.count % self._every == 0:
            self._log.exception("%s (%d so far)", self._message, self.count)
