"""A pipe that wakes a thread sleeping in ``select``/``poll``: the loop watches :meth:`fileno`, the
stopping side calls :meth:`wake`. For loops that sleep until their file descriptors have work (an idle
node costs such a thread nothing), where a ``threading.Event`` cannot be waited on together with them."""

from __future__ import annotations

import contextlib
import os

__all__ = ["Wakeup"]


class Wakeup:
    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._closed = False

    def fileno(self) -> int:
        """The end to watch: readable once :meth:`wake` was called (it stays readable)."""
        return self._read

    def wake(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError):  # a full pipe is readable already
            os.write(self._write, b"x")

    def close(self) -> None:
        """Close both ends (once: a second call must not close descriptors reused since)."""
        if not self._closed:
            self._closed = True
            os.close(self._read)
            os.close(self._write)
