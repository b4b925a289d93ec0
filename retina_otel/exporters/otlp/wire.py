"""Protobuf wire format, written directly: the pieces OTLP requests are made of.

Two kinds of helpers: scalar ones that encode one Python value (used once per distinct value: an
attribute key, an endpoint entry, an enum name), and :class:`Segments`, a column of byte strings (one
per row) that :func:`assemble` concatenates row by row with one numpy gather, so a batch of records is
encoded without a Python object per record. Only ``opentelemetry.proto.common.v1`` shapes are spelled
here (AnyValue, KeyValue); the signal encoders build their messages from these.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "INT64_MAX",
    "Segments",
    "any_value",
    "assemble",
    "constant",
    "field_bytes",
    "key_value",
    "matrix",
    "objects",
    "table",
    "varint",
    "varint_matrix",
]


INT64_MAX = 2**63 - 1
_U64 = 2**64 - 1
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


_SMALL = [bytes((i,)) for i in range(128)]


def varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _SMALL[number << 3 | 2] + varint(len(payload)) + payload if number < 16 else _long_field(number, payload)


def _long_field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


@functools.lru_cache(maxsize=4096)
def _key_field(key: str) -> bytes:
    return field_bytes(1, key.encode())


def any_value(value: Any) -> bytes | None:
    """``AnyValue`` of a Python attribute value as the SDK's encoder types it; None where the SDK drops
    the attribute (an unsupported type, an integer outside int64)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return field_bytes(1, value.encode())
    if isinstance(value, int):
        if not -(2**63) <= value <= INT64_MAX:
            return None
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return field_bytes(7, value)
    if isinstance(value, Sequence):
        parts = [any_value(v) for v in value]
        if any(p is None for p in parts):
            return None
        return field_bytes(5, b"".join(field_bytes(1, p) for p in parts if p is not None))
    if isinstance(value, Mapping):
        kvs = [key_value(str(k), v) for k, v in value.items()]
        if any(kv is None for kv in kvs):
            return None
        return field_bytes(6, b"".join(field_bytes(1, kv) for kv in kvs if kv is not None))
    return None


def key_value(key: str, value: Any) -> bytes | None:
    encoded = any_value(value)
    if encoded is None:
        return None
    return _key_field(key) + field_bytes(2, encoded)


def varint_matrix(values: npt.NDArray[np.uint64]) -> tuple[U8, I64]:
    """Varints of ``values`` as rows of a (n, 10) matrix, and each one's length."""
    x = values.astype(np.uint64, copy=True)
    n = x.shape[0]
    out = np.zeros((n, 10), np.uint8)
    lens = np.ones(n, np.int64)
    for k in range(10):
        low = (x & np.uint64(0x7F)).astype(np.uint8)
        x >>= np.uint64(7)
        more = x != 0
        out[:, k] = low | (more.astype(np.uint8) << 7)
        if k < 9:
            lens += more
        if not more.any():
            break
    return out, lens


@dataclass(frozen=True, slots=True)
class Segments:
    """One byte string per row (``b""`` = absent) and its length."""

    parts: npt.NDArray[np.object_]
    lens: I64


def objects(values: Sequence[bytes]) -> npt.NDArray[np.object_]:
    """A numpy array of the byte strings (object dtype: numpy keeps them as they are)."""
    out = np.empty(len(values), object)
    out[:] = values
    return out


def constant(payload: bytes, n: int) -> Segments:
    parts = np.empty(n, object)
    parts.fill(payload)
    return Segments(parts, np.full(n, len(payload), np.int64))


def table(fragments: Sequence[bytes], codes: npt.ArrayLike) -> Segments:
    """Row ``i`` is ``fragments[codes[i]]``: the bytes of each distinct value are made once."""
    lens = np.fromiter((len(f) for f in fragments), np.int64, len(fragments))
    index = np.asarray(codes, np.intp)
    return Segments(objects(fragments)[index], lens[index])


def matrix(rows: U8, lens: I64) -> Segments:
    """Row ``i`` is the first ``lens[i]`` bytes of ``rows[i]``; the rest of a row must be zeros unless its
    length is 0 (an absent value)."""
    n, width = rows.shape
    fixed = np.ascontiguousarray(rows).view(f"S{width}").reshape(n)
    # numpy's fixed-width bytes drop trailing NULs: put back those that belong to the row (a varint 0)
    parts = fixed.astype(object)
    missing = lens - np.char.str_len(fixed)
    for count in np.unique(missing[missing > 0]).tolist():
        short = np.flatnonzero(missing == count)
        pad = bytes(count)
        parts[short] = objects([p + pad for p in parts[short].tolist()])
    parts[lens == 0] = b""
    return Segments(parts, lens)


def assemble(columns: Sequence[Segments], prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """``prefix``, then for each row its part of every column in order, then ``suffix``: one join."""
    n = columns[0].lens.shape[0]
    grid = np.empty((n, len(columns)), object)
    for j, column in enumerate(columns):
        grid[:, j] = column.parts
    parts = grid.ravel().tolist()
    parts.insert(0, prefix)
    parts.append(suffix)
    return b"".join(parts)
