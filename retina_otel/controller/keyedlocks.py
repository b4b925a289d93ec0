"""One lock per key (a Capture, a pod) that exists only while someone holds or waits for it.

A ``defaultdict(threading.Lock)`` keeps a lock for every key it ever saw: with pods coming and going
the operator's memory grows without bound. :class:`KeyedLocks` counts the holders and waiters of each
key and forgets the key when the count drops to zero.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Iterator

__all__ = ["KeyedLocks"]


class KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.Lock, list[int]]] = {}  # key -> (lock, [users])

    def __len__(self) -> int:
        """Keys held or waited for now."""
        with self._guard:
            return len(self._locks)

    @contextlib.contextmanager
    def hold(self, *key: Hashable) -> Iterator[None]:
        """Hold the lock of ``key`` for the body of a ``with`` block."""
        with self._guard:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = (threading.Lock(), [0])
            entry[1][0] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1][0] -= 1
                if entry[1][0] == 0:
                    del self._locks[key]
