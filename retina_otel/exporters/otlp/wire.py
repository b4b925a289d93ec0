"""Protobuf wire format, written directly: the pieces OTLP requests are made of.

Two kinds of helpers: scalar ones that encode one Python value (used once per distinct value: an
attribute key, an endpoint entry, an enum name), and :class:`Segments`, a column of byte strings (one
per row) that :func:`assemble` concatenates row by row with one numpy gather, so a batch of records is
encoded without a Python object per record. Only ``opentelemetry.proto.common.v1`` shapes are spelled
here (AnyValue, KeyValue); the signal encoders build their messages from these.
"""

from __future__ import annotations

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
    "table",
    "varint",
    "varint_matrix",
]

INT64_MAX = 2**63 - 1
_U64 = 2**64 - 1
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


def varint(value: int) -> bytes:
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


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
    return field_bytes(1, key.encode()) + field_bytes(2, encoded)


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
    """One byte string per row: row ``i`` is ``data[starts[i]:starts[i] + lens[i]]`` (length 0 = absent)."""

    data: U8
    starts: I64
    lens: I64


def constant(payload: bytes, n: int) -> Segments:
    return Segments(np.frombuffer(payload, np.uint8), np.zeros(n, np.int64), np.full(n, len(payload), np.int64))


def table(fragments: Sequence[bytes], codes: npt.ArrayLike) -> Segments:
    """Row ``i`` is ``fragments[codes[i]]``: the bytes of each distinct value are made once."""
    lens = np.fromiter((len(f) for f in fragments), np.int64, len(fragments))
    starts = np.zeros(len(fragments), np.int64)
    if len(fragments) > 1:
        np.cumsum(lens[:-1], out=starts[1:])
    index = np.asarray(codes, np.intp)
    return Segments(np.frombuffer(b"".join(fragments) or b"\0", np.uint8), starts[index], lens[index])


def matrix(rows: U8, lens: I64) -> Segments:
    """Row ``i`` is the first ``lens[i]`` bytes of ``rows[i]``."""
    width = rows.shape[1]
    return Segments(np.ascontiguousarray(rows).reshape(-1), np.arange(rows.shape[0], dtype=np.int64) * width, lens)


def assemble(columns: Sequence[Segments]) -> tuple[U8, I64]:
    """Concatenate, for each row, its segment of every column in order; returns the bytes of all rows
    back to back and each row's length."""
    bases = np.cumsum([0] + [c.data.shape[0] for c in columns[:-1]])
    data = np.concatenate([c.data for c in columns])
    starts = np.stack([c.starts + b for c, b in zip(columns, bases, strict=True)], axis=1).reshape(-1)
    lens = np.stack([c.lens for c in columns], axis=1)
    flat = lens.reshape(-1)
    used = flat != 0
    flat, starts = flat[used], starts[used]
    ends = np.cumsum(flat)
    total = int(ends[-1]) if ends.shape[0] else 0
    # index[j] = start of j's segment + offset within it: a running sum of 1s with a jump at each segment
    index = np.ones(total, np.int32 if data.shape[0] < 2**31 and total < 2**31 else np.int64)
    if total:
        firsts = ends - flat
        jumps = starts.copy()
        jumps[1:] -= starts[:-1] + flat[:-1] - 1
        index[firsts] = jumps
        np.cumsum(index, out=index)
    return data[index], lens.sum(axis=1)
