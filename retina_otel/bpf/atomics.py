"""Acquire/release memory ordering from Python, for memory shared with the kernel (ring buffers).

ctypes has no atomics, and a plain load or store from Python (``struct``, numpy) is ordered on x86_64
(TSO: loads are not reordered with other loads, stores not with other stores) but not on arm64, where
a load may be satisfied before an earlier one and a store may become visible before earlier loads.
The functions here call GCC's libatomic (``libatomic.so.1``, Debian package ``libatomic1``), whose
exported functions are real atomic operations with the memory order passed in: ``__atomic_load_8``
with ``__ATOMIC_ACQUIRE`` is ``ldar`` on arm64, ``atomic_thread_fence(memory_order_acquire)`` is
``dmb ishld``; on x86_64 they are plain moves and a compiler barrier, which is all TSO needs.
No compiler is needed at run time. :func:`load` raises :class:`RuntimeError` naming the package when
the library is missing, so a node without it fails at start, not with silently reordered reads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["Atomics", "load"]

_ACQUIRE = 2  # __ATOMIC_ACQUIRE / memory_order_acquire
_RELEASE = 3  # __ATOMIC_RELEASE / memory_order_release


class Atomics:
    """The three operations a single-consumer ring-buffer reader needs, on raw addresses."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._load = getattr(lib, "__atomic_load_8")  # not lib.__atomic_load_8: a class mangles __names
        self._load.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._load.restype = ctypes.c_uint64
        self._store = getattr(lib, "__atomic_store_8")
        self._store.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        self._store.restype = None
        self._fence = lib.atomic_thread_fence
        self._fence.argtypes = [ctypes.c_int]
        self._fence.restype = None

    def load_acquire(self, address: int) -> int:
        """The 8-byte value at ``address``; later loads and stores are not ordered before it."""
        return int(self._load(address, _ACQUIRE))

    def store_release(self, address: int, value: int) -> None:
        """Store 8 bytes at ``address`` (one store); earlier loads and stores are not ordered after it."""
        self._store(address, value, _RELEASE)

    def fence_acquire(self) -> None:
        """Loads before the fence are ordered before loads and stores after it."""
        self._fence(_ACQUIRE)


@functools.cache
def load(name: str = "atomic") -> Atomics:
    """libatomic's functions (once per process), or RuntimeError saying what to install."""
    path = ctypes.util.find_library(name) or f"lib{name}.so.1"
    try:
        return Atomics(ctypes.CDLL(path))
    except (OSError, AttributeError) as exc:
        raise RuntimeError(
            f"lib{name}.so.1 with atomic_thread_fence (GCC 7+ libatomic; Debian/Ubuntu package libatomic1) is "
            f"needed to read BPF ring buffers with the memory ordering arm64 requires: {exc}"
        ) from exc
