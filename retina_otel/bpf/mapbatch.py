"""Batch operations on BPF hash maps straight into numpy arrays, without a Python object per entry.

bcc's ``items_lookup_batch`` / ``items_lookup_and_delete_batch`` yield one ctypes pair per entry; at
100K entries that is the slow part. These call the same libbcc batch functions
(``BPF_MAP_LOOKUP_BATCH``, ``BPF_MAP_LOOKUP_AND_DELETE_BATCH``, ``BPF_MAP_UPDATE_BATCH``) into flat
buffers viewed as numpy structured arrays (keys and values with the dtypes the caller gives, matching
the C structs).

* :func:`iter_batches`: the entries a chunk at a time (memory stays at one chunk whatever the map's size);
* :func:`lookup_batch`: every entry as two arrays, optionally deleting what it read (a drain);
* :func:`drain`: :func:`lookup_batch` of a bcc table, its sizes checked against the dtypes;
* :func:`update_batch`: many entries written in one call.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CHUNK", "drain", "iter_batches", "lookup_batch", "update_batch"]

CHUNK = 8192
"""Entries per batch call by default."""


def _libbcc() -> Any:
    from bcc.libbcc import lib

    return lib


def iter_batches(
    map_fd: int, key_dtype: np.dtype[Any], value_dtype: np.dtype[Any], chunk: int = CHUNK, *, delete: bool = False
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """The entries of a hash map, ``chunk`` at a time, as numpy arrays (a consistent snapshot per
    bucket), deleted as they are read when ``delete``. The arrays are reused between chunks: copy what
    must outlive the next one. A hash bucket larger than ``chunk`` (ENOSPC) doubles the chunk. Stops at
    the end of the map (ENOENT) or when a call makes no progress (concurrent updates: the rest comes
    next time)."""
    lib = _libbcc()
    keys = np.zeros(chunk, dtype=key_dtype)
    values = np.zeros(chunk, dtype=value_dtype)
    batch_fn = lib.bpf_lookup_and_delete_batch if delete else lib.bpf_lookup_batch
    token = ct.c_uint32(0)
    count = ct.c_uint32(0)
    first = True
    while True:
        count.value = chunk
        res = batch_fn(
            map_fd,
            None if first else ct.byref(token),
            ct.byref(token),
            ct.c_void_p(keys.ctypes.data),
            ct.c_void_p(values.ctypes.data),
            ct.byref(count),
        )
        err = ct.get_errno()
        first = False
        if count.value:
            yield keys[: count.value], values[: count.value]
        if res != 0:
            if err == errno.ENOSPC and not count.value and chunk < 1 << 22:  # a bucket larger than a chunk
                chunk *= 2
                keys, values = np.zeros(chunk, dtype=key_dtype), np.zeros(chunk, dtype=value_dtype)
                continue  # from the bucket the kernel stopped at (it wrote it into the token)
            if err != errno.ENOENT:
                name = "BPF_MAP_LOOKUP_AND_DELETE_BATCH" if delete else "BPF_MAP_LOOKUP_BATCH"
                raise OSError(err, f"{name}: {os.strerror(err)}")
            return
        if count.value == 0:
            return


def lookup_batch(
    map_fd: int, key_dtype: np.dtype[Any], value_dtype: np.dtype[Any], max_entries: int, *, delete: bool = False
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """All entries of a hash map as two numpy arrays; with ``delete`` they are removed as they are read.
    Reading stops once ``max_entries`` (the map's size) were read, so a drain racing with programs that
    keep inserting ends; what it read is returned, whatever comes later waits for the next call."""
    keys: list[npt.NDArray[Any]] = []
    values: list[npt.NDArray[Any]] = []
    total = 0
    for k, v in iter_batches(map_fd, key_dtype, value_dtype, max(1, min(max_entries, CHUNK)), delete=delete):
        keys.append(k.copy())
        values.append(v.copy())
        total += k.shape[0]
        if total >= max_entries:
            break
    if not keys:
        return np.zeros(0, dtype=key_dtype), np.zeros(0, dtype=value_dtype)
    if len(keys) == 1:
        return keys[0], values[0]
    return np.concatenate(keys), np.concatenate(values)


def drain(
    table: Any, key_dtype: np.dtype[Any], value_dtype: np.dtype[Any], *, delete: bool = True
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """All entries of ``table`` (a bcc hash table), looked up and (by default) deleted in batches."""
    if key_dtype.itemsize != ct.sizeof(table.Key) or value_dtype.itemsize != ct.sizeof(table.Leaf):
        raise ValueError(
            f"dtype sizes {key_dtype.itemsize}/{value_dtype.itemsize} do not match the map's "
            f"{ct.sizeof(table.Key)}/{ct.sizeof(table.Leaf)}"
        )
    return lookup_batch(table.map_fd, key_dtype, value_dtype, int(table.max_entries), delete=delete)


def update_batch(map_fd: int, keys: npt.NDArray[Any], values: npt.NDArray[Any]) -> None:
    """Write ``keys[i] -> values[i]`` for every i in one ``BPF_MAP_UPDATE_BATCH``."""
    lib = _libbcc()
    keys = np.ascontiguousarray(keys)
    values = np.ascontiguousarray(values)
    count = ct.c_uint32(int(keys.shape[0]))
    res = lib.bpf_update_batch(
        map_fd, ct.c_void_p(keys.ctypes.data), ct.c_void_p(values.ctypes.data), ct.byref(count)
    )
    if res != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_MAP_UPDATE_BATCH: {os.strerror(err)}")
