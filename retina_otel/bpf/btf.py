"""A small reader of the kernel's BTF (``/sys/kernel/btf/vmlinux``): struct member offsets and enums.

The BPF programs are compiled by bcc against the distribution's (older) kernel headers, so a program
must not use the headers' layout of kernel structs such as ``sk_buff``: fields move between kernel
versions. This module reads the running kernel's layout from BTF, and receivers pass the offsets in as
``-D`` cflags (CO-RE done by hand, which bcc does not offer). Only what the receivers need is parsed:
structs, unions (anonymous members are walked through), enums and the size of a member's type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Btf", "BtfError", "MemberInfo", "kernel_btf"]

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_MODIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}


class BtfError(RuntimeError):
    """BTF missing, malformed, or without the type or member asked for."""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """Where a member lives in its struct: byte offset, size in bytes, and bit offset/size for bitfields."""

    offset: int
    size: int
    bit_offset: int
    bitfield_size: int  # 0 unless a bitfield


@dataclass(slots=True)
class _Type:
    kind: int
    name: str
    kind_flag: bool
    size_or_type: int
    members: list[tuple[str, int, int]]  # (name, type id, raw offset) for struct/union
    enum_values: list[tuple[str, int]]
    array: tuple[int, int] | None  # (element type id, count)


class Btf:
    """Parsed BTF blob; look-ups by name."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != 0xEB9F:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        base = hdr_len
        self._strings = blob[base + str_off : base + str_off + str_len]
        self._types: list[_Type | None] = [None]  # type id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        self._parse(blob[base + type_off : base + type_off + type_len])

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else None].decode("utf-8", "replace")

    def _parse(self, data: bytes) -> None:
        pos = 0
        unpack = struct.unpack_from
        while pos + 12 <= len(data):
            name_off, info, size_or_type = unpack("<III", data, pos)
            pos += 12
            vlen = info & 0xFFFF
            kind = (info >> 24) & 0x1F
            kind_flag = bool(info >> 31)
            members: list[tuple[str, int, int]] = []
            enum_values: list[tuple[str, int]] = []
            array: tuple[int, int] | None = None
            if kind in (_INT, _VAR, _DECL_TAG):
                pos += 4
            elif kind == _ARRAY:
                elem, _index, count = unpack("<III", data, pos)
                array = (elem, count)
                pos += 12
            elif kind in (_STRUCT, _UNION):
                for _ in range(vlen):
                    m_name, m_type, m_off = unpack("<III", data, pos)
                    members.append((self._str(m_name), m_type, m_off))
                    pos += 12
            elif kind == _ENUM:
                for _ in range(vlen):
                    e_name, e_val = unpack("<Ii", data, pos)
                    enum_values.append((self._str(e_name), e_val))
                    pos += 8
            elif kind == _ENUM64:
                for _ in range(vlen):
                    e_name, lo, hi = unpack("<III", data, pos)
                    enum_values.append((self._str(e_name), lo | (hi << 32)))
                    pos += 12
            elif kind == _FUNC_PROTO:
                pos += 8 * vlen
            elif kind == _DATASEC:
                pos += 12 * vlen
            name = self._str(name_off) if name_off else ""
            self._types.append(_Type(kind, name, kind_flag, size_or_type, members, enum_values, array))
            if name:
                self._by_name.setdefault((kind, name), len(self._types) - 1)

    # -- look-ups ---------------------------------------------------------------------------------
    def _find(self, kinds: tuple[int, ...], name: str) -> _Type:
        for kind in kinds:
            ident = self._by_name.get((kind, name))
            if ident is not None:
                found = self._types[ident]
                assert found is not None
                return found
        raise BtfError(f"type {name!r} not in BTF")

    def type_size(self, type_id: int) -> int:
        """Size in bytes of a type, following typedefs and qualifiers."""
        for _ in range(64):
            t = self._types[type_id] if 0 < type_id < len(self._types) else None
            if t is None:
                return 0
            if t.kind in _MODIFIERS:
                type_id = t.size_or_type
                continue
            if t.kind == _PTR:
                return 8
            if t.kind == _ARRAY and t.array is not None:
                return self.type_size(t.array[0]) * t.array[1]
            return t.size_or_type
        raise BtfError("type chain too long")

    def struct_size(self, name: str) -> int:
        return self._find((_STRUCT, _UNION), name).size_or_type

    def member(self, struct_name: str, member: str) -> MemberInfo:
        """Offset and size of ``struct_name.member`` (searching through anonymous structs and unions)."""
        found = self._member_in(self._find((_STRUCT, _UNION), struct_name), member, 0)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member!r} in this kernel's BTF")
        return found

    def _member_in(self, t: _Type, wanted: str, base_bits: int) -> MemberInfo | None:
        for name, type_id, raw in t.members:
            if t.kind_flag:
                bits, bitfield_size = raw & 0xFFFFFF, raw >> 24
            else:
                bits, bitfield_size = raw, 0
            if name == wanted:
                total = base_bits + bits
                return MemberInfo(total // 8, self.type_size(type_id), total, bitfield_size)
            if not name:
                inner = self._resolve(type_id)
                if inner is not None and inner.kind in (_STRUCT, _UNION):
                    found = self._member_in(inner, wanted, base_bits + bits)
                    if found is not None:
                        return found
        return None

    def _resolve(self, type_id: int) -> _Type | None:
        for _ in range(64):
            t = self._types[type_id] if 0 < type_id < len(self._types) else None
            if t is None or t.kind not in _MODIFIERS:
                return t
            type_id = t.size_or_type
        return None

    def enum(self, name: str) -> dict[str, int]:
        """Enumerator names to values of ``enum name``."""
        return dict(self._find((_ENUM, _ENUM64), name).enum_values)


@lru_cache(maxsize=1)
def kernel_btf(path: Path = VMLINUX) -> Btf:
    """The running kernel's BTF, parsed once per process (about 0.3 s)."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc} (kernel built without CONFIG_DEBUG_INFO_BTF?)") from exc
    return Btf(blob)
