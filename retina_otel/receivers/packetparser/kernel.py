"""Thin syscall plumbing bcc does not offer in the shape we need.

* :func:`prog_test_run`: ``BPF_PROG_TEST_RUN`` through the raw ``bpf(2)`` syscall (used for the
  flush program and by the tests on crafted packets).
* Map batch reads and writes are :mod:`retina_otel.bpf.mapbatch`'s.
* :class:`RingBufReader`: a ring-buffer consumer over the map's mmap'ed pages that hands back whole
  runs of fixed-size records as one numpy array (or copies their bodies straight into rows the caller
  owns), instead of one Python callback per record.
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
    contiguous in our mapping. We copy the run ``[consumer, producer)`` in one go (:meth:`read`: the
    records; :meth:`read_into`: their bodies, into the caller's rows), stop at the first record still
    being written (BUSY bit), skip discarded ones, and advance the consumer position.
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
        consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._maps: tuple[mmap.mmap, ...] = (consumer, producer)
        as_bytes = np.frombuffer(consumer, dtype=np.uint8), np.frombuffer(producer, dtype=np.uint8)
        self._setup(*as_bytes, size, record_dtype)

    @classmethod
    def over_memory(
        cls, consumer: npt.NDArray[np.uint8], producer: npt.NDArray[np.uint8], size: int, record_dtype: np.dtype
    ) -> RingBufReader:
        """A reader over memory laid out like the map's: ``consumer`` (a page starting with the consumer
        position) and ``producer`` (a page starting with the producer position, then the data area twice);
        for measuring and testing the reader without a kernel."""
        reader = cls.__new__(cls)
        reader._maps = ()
        reader._setup(consumer, producer, size, record_dtype)
        return reader

    def _setup(
        self, consumer: npt.NDArray[np.uint8], producer: npt.NDArray[np.uint8], size: int, record_dtype: np.dtype
    ) -> None:
        if record_dtype.fields is None or record_dtype.fields["hdr_len"][1] != 0 or record_dtype.itemsize % 8:
            raise ValueError("record_dtype must start with the 4-byte hdr_len and be a multiple of 8 bytes")
        if producer.shape[0] < PAGE_SIZE + 2 * size:
            raise ValueError("the producer mapping holds a page and the data area twice")
        self._size = size
        self._rec = record_dtype
        self._page = PAGE_SIZE
        self._data = producer
        self._atomics = atomics.load()
        self._consumer_addr = consumer.ctypes.data
        self._producer_addr = producer.ctypes.data

    def _committed(self, max_records: int | None) -> tuple[int, int, int, npt.NDArray[np.uint32] | None]:
        """Steps 1-2: (consumer position, start in our mapping, records ready, the ready records' DISCARD
        bits or None when none is set)."""
        rec = self._rec.itemsize
        cons = self._atomics.load_acquire(self._consumer_addr)  # only we write it
        prod = self._atomics.load_acquire(self._producer_addr)
        avail = prod - cons
        if avail <= 0:
            return cons, 0, 0, None
        n = avail // rec
        if avail % rec:
            raise RuntimeError("ring buffer holds records of an unexpected size")
        if max_records is not None:
            n = min(n, max_records)
        start = self._page + (cons & (self._size - 1))
        # One aligned 4-byte load per header, keeping its BUSY and DISCARD bits: a record's DISCARD bit is
        # read by the same load that saw its BUSY bit clear.
        headers = np.ndarray((n,), dtype="<u4", buffer=self._data, offset=start, strides=(rec,))
        marks = headers & np.uint32(_BUSY | _DISCARD)
        if not marks.any():  # the common case: every record committed, none discarded
            return cons, start, n, None
        busy = (marks & np.uint32(_BUSY)) != 0
        if busy.any():
            n = int(np.argmax(busy))
        discard = marks[:n] & np.uint32(_DISCARD)
        return cons, start, n, discard if discard.any() else None

    def read(self, max_records: int | None = None) -> npt.NDArray[np.void]:
        """The committed records (headers included), discarded ones left out."""
        cons, start, n, discard = self._committed(max_records)
        if n == 0:
            return np.zeros(0, dtype=self._rec)
        rec = self._rec.itemsize
        self._atomics.fence_acquire()
        chunk = self._data[start : start + n * rec].copy().view(self._rec)
        self._atomics.store_release(self._consumer_addr, cons + n * rec)
        return chunk if discard is None else chunk[discard == 0]

    def read_into(self, out: npt.NDArray[np.void]) -> tuple[int, int]:
        """Copy the records' bodies (without the 8-byte header) of at most ``out.shape[0]`` committed
        records into ``out``, one per element, straight from the ring: ``out`` is a 1-D array of opaque
        values of the body's size (``np.void``, any strides, e.g. the first bytes of each of a block of
        wider rows). Discarded records are left out. Returns (records consumed, elements written, at the
        front of ``out``); (0, 0) when nothing is ready."""
        rec = self._rec.itemsize
        if out.dtype.itemsize != rec - 8:
            raise ValueError(f"out holds {out.dtype.itemsize}-byte elements; the records carry {rec - 8}")
        cons, start, n, discard = self._committed(int(out.shape[0]))
        if n == 0:
            return 0, 0
        bodies = np.ndarray((n,), dtype=out.dtype, buffer=self._data, offset=start + 8, strides=(rec,))
        self._atomics.fence_acquire()
        np.copyto(out[:n], bodies)
        self._atomics.store_release(self._consumer_addr, cons + n * rec)
        if discard is None:
            return n, n
        kept = out[:n][discard == 0]  # boolean indexing copies
        out[: kept.shape[0]] = kept
        return n, int(kept.shape[0])

    def close(self) -> None:
        self._data = np.zeros(0, dtype=np.uint8)
        for m in self._maps:
            with contextlib.suppress(BufferError):  # a view still alive; the mapping goes with the process
                m.close()
