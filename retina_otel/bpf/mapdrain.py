"""Drain a bcc hash map into numpy arrays in one batch syscall loop, without a Python object per entry.

bcc's ``items_lookup_and_delete_batch`` yields one ctypes pair per entry; at 100K entries that is the
slow part. :func:`drain` calls the same libbcc batch function into two flat buffers and returns them
as numpy structured arrays (keys and values with the dtypes the caller gives, matching the C structs).
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["drain"]


def drain(
    table: Any, key_dtype: np.dtype[Any], value_dtype: np.dtype[Any], *, delete: bool = True
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """All entries of ``table`` (a bcc hash table), looked up and (by default) deleted in batches."""
    from bcc.libbcc import lib

    if key_dtype.itemsize != ct.sizeof(table.Key) or value_dtype.itemsize != ct.sizeof(table.Leaf):
        raise ValueError(
            f"dtype sizes {key_dtype.itemsize}/{value_dtype.itemsize} do not match the map's "
            f"{ct.sizeof(table.Key)}/{ct.sizeof(table.Leaf)}"
        )
    capacity = int(table.max_entries)
    keys = (ct.c_ubyte * (key_dtype.itemsize * capacity))()
    values = (ct.c_ubyte * (value_dtype.itemsize * capacity))()
    batch_fn = lib.bpf_lookup_and_delete_batch if delete else lib.bpf_lookup_batch
    out_batch = ct.c_uint32(0)
    count = ct.c_uint32(0)
    total = 0
    while total < capacity:
        count.value = capacity - total
        res = batch_fn(
            table.map_fd,
            ct.byref(out_batch) if total else None,
            ct.byref(out_batch),
            ct.byref(keys, key_dtype.itemsize * total),
            ct.byref(values, value_dtype.itemsize * total),
            ct.byref(count),
        )
        err = ct.get_errno()
        total += count.value
        if res != 0:
            if err != errno.ENOENT:
                raise OSError(err, f"BPF map batch lookup failed: {os.strerror(err)}")
            break  # ENOENT: the whole map was walked
        if count.value == 0:
            break  # no progress (concurrent updates); the rest comes next interval
    k = np.ctypeslib.as_array(keys)[: key_dtype.itemsize * total].view(key_dtype).copy()
    v = np.ctypeslib.as_array(values)[: value_dtype.itemsize * total].view(value_dtype).copy()
    return k, v
