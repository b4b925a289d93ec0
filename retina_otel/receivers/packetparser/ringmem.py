"""Memory laid out like a BPF ring buffer map, written from user space: for measuring and testing
:class:`~.kernel.RingBufReader` (and what consumes its output) without a kernel.

The layout is the map's as the reader maps it: a consumer page starting with the consumer position, and
a producer page starting with the producer position followed by the data area twice (the kernel maps
the data pages twice in a row, so a run of records that wraps around the end is contiguous).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from retina_otel.bpf.ringsize import PAGE_SIZE, check_ring_size

from .kernel import RingBufReader

__all__ = ["RingMemory"]


class RingMemory:
    """A ring of ``size`` bytes (a valid ring buffer size) and the producer's side of it."""

    def __init__(self, size: int) -> None:
        self.size = check_ring_size(size)
        self.consumer = np.zeros(PAGE_SIZE, dtype=np.uint8)
        self.producer = np.zeros(PAGE_SIZE + 2 * size, dtype=np.uint8)

    @property
    def consumer_pos(self) -> int:
        return int(self.consumer[:8].view("<u8")[0])

    @property
    def producer_pos(self) -> int:
        return int(self.producer[:8].view("<u8")[0])

    def reader(self, record_dtype: np.dtype) -> RingBufReader:
        return RingBufReader.over_memory(self.consumer, self.producer, self.size, record_dtype)

    def publish(self, records: npt.NDArray[np.void]) -> None:
        """Append ``records`` (whole ring-buffer records, headers included) at the producer position and
        advance it, as committed records; raises ValueError when they do not fit before the consumer."""
        raw = np.ascontiguousarray(records).view(np.uint8).reshape(-1)
        prod = self.producer_pos
        if prod + raw.shape[0] - self.consumer_pos > self.size:
            raise ValueError("the records do not fit in the ring")
        start = prod & (self.size - 1)
        first = min(raw.shape[0], self.size - start)
        data = self.producer[PAGE_SIZE:]
        for base in (0, self.size):  # both mappings of the data area
            data[base + start : base + start + first] = raw[:first]
        rest = raw[first:]  # wrapped around the end: the start of the area
        data[: rest.shape[0]] = rest
        data[self.size : self.size + rest.shape[0]] = rest
        self.producer[:8].view("<u8")[0] = prod + raw.shape[0]
