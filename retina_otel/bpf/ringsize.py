"""Sizes of BPF ring buffers, in this node's pages.

The kernel takes a ring buffer's size (``max_entries``) only as a power of two that is a multiple of
its page size (``ringbuf_map_alloc`` in ``kernel/bpf/ringbuf.c``), and bcc's ``BPF_RINGBUF_OUTPUT``
counts it in pages of the running kernel (``page_cnt * getpagesize()``). Pages are 4 KiB on x86_64
but 4, 16 or 64 KiB on arm64 kernels, so sizes are checked and converted with :data:`PAGE_SIZE`, the
page size of this node, never with a constant 4096.
"""

from __future__ import annotations

import mmap

__all__ = ["PAGE_SIZE", "check_ring_size", "ring_pages"]

PAGE_SIZE = mmap.PAGESIZE


def check_ring_size(size: int, page_size: int = PAGE_SIZE) -> int:
    """``size`` if the kernel accepts it as a ring buffer size, else ValueError saying what would."""
    if size < page_size or size & (size - 1):
        raise ValueError(
            f"{size} is not a valid ring buffer size: it must be a power of two and a multiple of the page "
            f"size ({page_size} bytes on this node), e.g. {max(page_size, 1 << max(size - 1, 0).bit_length())}"
        )
    return size


def ring_pages(size: int, page_size: int = PAGE_SIZE) -> int:
    """The page count for ``BPF_RINGBUF_OUTPUT(name, pages)`` that makes a ring buffer of ``size`` bytes."""
    return check_ring_size(size, page_size) // page_size
