"""retina_otel.bpf.mapbatch on a real hash map: reads every entry across chunks, drains (deletes what it
returns), writes in one batch, and checks a bcc table's sizes against the dtypes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from retina_otel.bpf.mapbatch import CHUNK, drain, iter_batches, lookup_batch, update_batch

pytestmark = pytest.mark.kernel

N = CHUNK * 2 + 123  # more than two chunks
KEY = np.dtype([("k", "<u4")])
VALUE = np.dtype([("a", "<u8"), ("b", "<u8")])


@pytest.fixture
def table() -> Iterator[Any]:
    from bcc import BPF

    bpf = BPF(text=f"BPF_HASH(entries, u32, struct {{ u64 a; u64 b; }}, {N + 100});")
    try:
        yield bpf["entries"]
    finally:
        bpf.cleanup()


def _fill(table: Any, n: int) -> None:
    keys = np.arange(n, dtype=np.uint32)
    values = np.zeros(n, dtype=VALUE)
    values["a"] = keys
    values["b"] = keys * 3
    update_batch(table.map_fd, keys, values)


def test_lookup_iter_drain(table: Any) -> None:
    _fill(table, N)
    chunks = [k.shape[0] for k, _v in iter_batches(table.map_fd, KEY, VALUE, CHUNK)]
    assert sum(chunks) == N and max(chunks) <= CHUNK and len(chunks) >= 3
    keys, values = lookup_batch(table.map_fd, KEY, VALUE, int(table.max_entries))
    assert sorted(keys["k"].tolist()) == list(range(N))
    assert (values["a"] == keys["k"]).all() and (values["b"] == keys["k"] * 3).all()
    assert len(table) == N  # a lookup deletes nothing
    keys, values = drain(table, KEY, VALUE)
    assert sorted(keys["k"].tolist()) == list(range(N)) and (values["a"] == keys["k"]).all()
    assert len(table) == 0
    keys, values = drain(table, KEY, VALUE)
    assert keys.shape == (0,) and values.dtype == VALUE


def test_drain_checks_the_dtypes_against_the_map(table: Any) -> None:
    with pytest.raises(ValueError, match="do not match"):
        drain(table, KEY, np.dtype("<u8"))


def test_a_bucket_larger_than_the_chunk_grows_the_chunk(table: Any) -> None:
    """With 16K+ entries in 32K buckets many buckets hold two or more: a chunk of 1 gets ENOSPC from the
    kernel, which the reader answers with a bigger chunk instead of an error. Also what the self-metrics
    count with (objinfo.count_entries)."""
    from retina_otel.bpf import objinfo

    _fill(table, N)
    seen = [int(k) for keys, _v in iter_batches(table.map_fd, KEY, VALUE, 1) for k in keys["k"]]
    assert sorted(seen) == list(range(N))
    keys, _values = lookup_batch(table.map_fd, KEY, VALUE, int(table.max_entries), delete=True)
    assert sorted(keys["k"].tolist()) == list(range(N)) and len(table) == 0
    _fill(table, 1000)
    info = objinfo.map_info(table.map_fd)
    assert objinfo.count_entries(table.map_fd, info, chunk=1) == 1000
    assert objinfo.count_entries(table.map_fd, info, chunk=64, limit=100) in range(100, 165)
