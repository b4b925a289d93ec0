"""Ring buffer sizes in the node's pages: valid sizes for 4, 16 and 64 KiB pages, a clear config error
naming the field otherwise, and the kernel taking what the check accepts."""

from __future__ import annotations

import mmap

import pytest

from retina_otel.bpf.ringsize import PAGE_SIZE, check_ring_size, ring_pages
from retina_otel.config import ConfigError, parse_config

KIB = 1024


def test_page_size_is_the_kernels() -> None:
    assert PAGE_SIZE == mmap.PAGESIZE
    assert PAGE_SIZE & (PAGE_SIZE - 1) == 0


@pytest.mark.parametrize("page", [4 * KIB, 16 * KIB, 64 * KIB])
def test_pages_for_each_arm64_page_size(page: int) -> None:
    assert ring_pages(8 << 20, page) == (8 << 20) // page
    assert ring_pages(page, page) == 1
    for bad in (page // 2, 3 * page, page + 8, 0, -page):
        with pytest.raises(ValueError, match=f"power of two and a multiple of the page size \\({page} bytes"):
            check_ring_size(bad, page)


def test_error_suggests_a_valid_size() -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 16384"):
        check_ring_size(12 * KIB, 4 * KIB)
    with pytest.raises(ValueError, match=r"e\.g\. 65536"):
        check_ring_size(32 * KIB, 64 * KIB)  # a 4 KiB-page size on a 64 KiB-page node


def _config(ring_buffer_size: int) -> dict[str, object]:
    return {
        "receivers": {"packetparser": {"ring_buffer_size": ring_buffer_size}},
        "exporters": {"debug": {}},
        "service": {"pipelines": {"logs": {"receivers": ["packetparser"], "exporters": ["debug"]}}},
    }


def test_config_error_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(PAGE_SIZE * 3), env={})
    text = "\n".join(str(p) for p in info.value.problems)
    assert "ring_buffer_size" in text and f"multiple of the page size ({PAGE_SIZE} bytes" in text
    parse_config(_config(PAGE_SIZE * 4), env={})


@pytest.mark.kernel
@pytest.mark.parametrize("pages", [1, 4])
def test_kernel_takes_the_checked_size(pages: int) -> None:
    """bcc multiplies by the running kernel's page size: the map it creates has exactly our size."""
    from bcc import BPF

    bpf = BPF(text=f"BPF_RINGBUF_OUTPUT(ring, {ring_pages(pages * PAGE_SIZE)});\nint f(void *ctx) {{ return 0; }}")
    try:
        assert int(bpf["ring"].max_entries) == pages * PAGE_SIZE
    finally:
        bpf.cleanup()
