"""libatomic's acquire/release operations as the ring-buffer reader uses them, and the clear error
when the library is missing."""

from __future__ import annotations

import ctypes

import pytest

from retina_otel.bpf import atomics


def test_load_and_store_on_shared_memory() -> None:
    ops = atomics.load()
    cell = (ctypes.c_uint64 * 2)(0, 7)
    address = ctypes.addressof(cell)
    assert ops.load_acquire(address) == 0 and ops.load_acquire(address + 8) == 7
    ops.store_release(address, 2**64 - 2)
    assert cell[0] == 2**64 - 2 and cell[1] == 7  # one 8-byte store, the neighbour untouched
    ops.fence_acquire()
    assert atomics.load() is ops  # loaded once per process


def test_missing_library_says_what_to_install() -> None:
    with pytest.raises(RuntimeError, match=r"libnot_a_library\.so\.1 .*package libatomic1"):
        atomics.load("not_a_library")
