"""Thin syscall plumbing bcc does not offer in the shape we need.

* :func:`prog_test_run`: ``BPF_PROG_TEST_RUN`` through the raw ``bpf(2)`` syscall (used for the
  flush program and by the tests on crafted packets).
* Map batch reads and writes are :mod:`retina_otel.bpf.mapbatch`'s.
* :class:`RingBufReader`: a ring-buffer consumer over the map's mmap'ed pages that hands back whole
  runs of fixed-size records as one numpy array, instead of one Python callback per record.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap

import numpy as np
import numpy.typing as npt

from retina_otel.bpf import atomics
from retina_otel.bpf.ringsize import PAGE_SIZE, check_ring_size
from retina_otel.bpf.syscall import bpf

__all__ = ["RingBufReader", "TestRunResult", "prog_test_run"]

_BPF_PROG_TEST_RUN = 10


class _TestAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class TestRunResult:
    __test__ = False

    def __init__(self, retval: int, data_out: bytes, duration_ns: int) -> None:
        self.retval = retval
        self.data_out = data_out
        self.duration_ns = duration_ns


def prog_test_run(prog_fd: int, data: bytes, *, ctx: bytes | None = None, repeat: int = 1) -> TestRunResult:
    """Run a loaded program once on ``data`` (a whole frame for TC programs)."""
    attr = _TestAttr()
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 256)
    attr.prog_fd = prog_fd
    attr.data_size_in = len(data)
    attr.data_in = ctypes.addressof(data_in)
    attr.data_size_out = len(data_out)
    attr.data_out = ctypes.addressof(data_out)
    attr.repeat = repeat
    ctx_buf = None
    if ctx is not None:
        ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
        attr.ctx_in = ctypes.addressof(ctx_buf)
        attr.ctx_size_in = len(ctx)
    bpf(_BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    return TestRunResult(int(attr.retval), data_out.raw[: attr.data_size_out], int(attr.duration))


_BUSY = 1 << 31
_DISCARD = 1 << 30


class RingBufReader:
    """Consume a BPF ring buffer whose records all have ``record_dtype`` (header included).

    The kernel maps the data area twice in a row, so a run of records that wraps around the end is
    contiguous in our mapping. We copy the run ``[consumer, producer)`` in one go, stop at the first
    record still being written (BUSY bit), skip discarded ones, and advance the consumer position.
    Single consumer: callers serialise :meth:`read`.

    Memory ordering (the kernel's side is ``kernel/bpf/ringbuf.c``: reserve publishes ``producer_pos``
    with ``smp_store_release`` and a header with the BUSY bit; commit clears the bit with ``xchg``, a
    full barrier after the record's data; reserve reads ``consumer_pos`` with ``smp_load_acquire``):

    1. ``producer_pos`` is read with an acquire load, so the headers read next are at least as new;
    2. the headers of the run are read, and the run ends at the first BUSY one;
    3. an acquire fence, then the records up to there are copied: the fence orders the header loads
       that saw BUSY clear before the loads of the data, so the copy holds what the program committed
       (without it arm64 may load the data first and see it half written);
    4. ``consumer_pos`` is stored with a release store, so the copy is complete before the kernel may
       reuse the space.

    The operations come from libatomic (:mod:`retina_otel.bpf.atomics`); without it the reader does
    not start.
    """

    def __init__(self, map_fd: int, size: int, record_dtype: np.dtype) -> None:
        page = PAGE_SIZE
        check_ring_size(size)
        self._size = size
        self._rec = record_dtype
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._page = page
        self._data = np.frombuffer(self._producer, dtype=np.uint8)
        self._atomics = atomics.load()
        self._consumer_addr = np.frombuffer(self._consumer, dtype=np.uint8).ctypes.data
        self._producer_addr = self._data.ctypes.data
        if record_dtype.fields is None or record_dtype.fields["hdr_len"][1] != 0 or record_dtype.itemsize % 8:
            raise ValueError("record_dtype must start with the 4-byte hdr_len and be a multiple of 8 bytes")

    def read(self, max_records: int | None = None) -> npt.NDArray[np.void]:
        rec = self._rec.itemsize
        cons = self._atomics.load_acquire(self._consumer_addr)  # only we write it
        prod = self._atomics.load_acquire(self._producer_addr)
        avail = prod - cons
        if avail <= 0:
            return np.zeros(0, dtype=self._rec)
        n = avail // rec
        if avail % rec:
            raise RuntimeError("ring buffer holds records of an unexpected size")
        if max_records is not None:
            n = min(n, max_records)
        start = self._page + (cons & (self._size - 1))
        headers = np.ndarray((n,), dtype="<u4", buffer=self._data, offset=start, strides=(rec,))
        busy = (headers & _BUSY) != 0  # one aligned 4-byte load per header
        if busy.any():
            n = int(np.argmax(busy))
        if n == 0:
            return np.zeros(0, dtype=self._rec)
        self._atomics.fence_acquire()
        chunk = self._data[start : start + n * rec].copy().view(self._rec)
        self._atomics.store_release(self._consumer_addr, cons + n * rec)
        keep = (chunk["hdr_len"] & _DISCARD) == 0
        return chunk if keep.all() else chunk[keep]

    def close(self) -> None:
        self._data = np.zeros(0, dtype=np.uint8)
        for m in (self._consumer, self._producer):
            with contextlib.suppress(BufferError):  # a view still alive; the mapping goes with the process
                m.close()
