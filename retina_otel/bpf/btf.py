"""A small reader of the kernel's BTF (``/sys/kernel/btf/vmlinux``): struct member offsets and enums.

The BPF programs are compiled by bcc against the distribution's (older) kernel headers, so a program
must not use the headers' layout of kernel structs such as ``sk_buff``: fields move between kernel
versions. This module reads the running kernel's layout from BTF, and receivers pass the offsets in as
``-D`` cflags (CO-RE done by hand, which bcc does not offer). Only what the receivers need is parsed:
structs, unions (anonymous members are walked through), enums and the size of a member's type.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Btf", "BtfError", "MemberInfo", "kernel_btf", "require_tracepoint_args"]

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_MODIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}
# How a type's kind is spelled before its name in C.
_KIND_PREFIX = {_STRUCT: "struct ", _UNION: "union ", _ENUM: "enum ", _ENUM64: "enum ", _FWD: "struct "}
# Bytes that follow a type's 12-byte header: a fixed part, and a part per vlen entry.
_EXTRA_FIXED = {_INT: 4, _VAR: 4, _DECL_TAG: 4, _ARRAY: 12}
_EXTRA_PER_VLEN = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _ENUM64: 12, _FUNC_PROTO: 8, _DATASEC: 12}


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
    """Parsed BTF blob; look-ups by name.

    Compact on purpose: a vmlinux BTF has some 130,000 types, and building a Python object per type
    cost about 65 MB of resident memory (it was cached for the life of the agent). Parsing records
    only where each type starts (4 bytes a type); a look-up finds the name in the string section and
    the types carrying it with numpy, then decodes just the records it walks.
    """

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != 0xEB9F:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        base = hdr_len
        self._strings = blob[base + str_off : base + str_off + str_len]
        self._data = blob[base + type_off : base + type_off + type_len]
        # Byte offset of each type's record; index = type id (id 0 is void, offset unused).
        self._offsets = self._scan(self._data)
        words = np.frombuffer(self._data, dtype="<u4", count=len(self._data) // 4)
        starts = np.asarray(self._offsets[1:], dtype=np.int64) // 4
        self._name_offs = words[starts]
        self._kinds = (words[starts + 1] >> 24) & 0x1F

    @staticmethod
    def _scan(data: bytes) -> array[int]:
        offsets = array("I", [0])
        pos = 0
        unpack = struct.unpack_from
        fixed, per_vlen = _EXTRA_FIXED, _EXTRA_PER_VLEN
        end = len(data)
        while pos + 12 <= end:
            offsets.append(pos)
            info = unpack("<I", data, pos + 4)[0]
            kind = (info >> 24) & 0x1F
            pos += 12 + fixed.get(kind, 0) + per_vlen.get(kind, 0) * (info & 0xFFFF)
        return offsets

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else None].decode("utf-8", "replace")

    def _type(self, type_id: int) -> _Type | None:
        if not 0 < type_id < len(self._offsets):
            return None
        pos = self._offsets[type_id]
        data = self._data
        unpack = struct.unpack_from
        name_off, info, size_or_type = unpack("<III", data, pos)
        pos += 12
        vlen = info & 0xFFFF
        kind = (info >> 24) & 0x1F
        members: list[tuple[str, int, int]] = []
        enum_values: list[tuple[str, int]] = []
        array_info: tuple[int, int] | None = None
        if kind == _ARRAY:
            elem, _index, count = unpack("<III", data, pos)
            array_info = (elem, count)
        elif kind in (_STRUCT, _UNION):
            for i in range(vlen):
                m_name, m_type, m_off = unpack("<III", data, pos + 12 * i)
                members.append((self._str(m_name), m_type, m_off))
        elif kind == _ENUM:
            for i in range(vlen):
                e_name, e_val = unpack("<Ii", data, pos + 8 * i)
                enum_values.append((self._str(e_name), e_val))
        elif kind == _ENUM64:
            for i in range(vlen):
                e_name, lo, hi = unpack("<III", data, pos + 12 * i)
                enum_values.append((self._str(e_name), lo | (hi << 32)))
        name = self._str(name_off) if name_off else ""
        return _Type(kind, name, bool(info >> 31), size_or_type, members, enum_values, array_info)

    # -- look-ups ---------------------------------------------------------------------------------
    def _find(self, kinds: tuple[int, ...], name: str) -> _Type:
        wanted = name.encode() + b"\0"
        # Every offset where the string section holds exactly `name` (a name offset may point into
        # the tail of a longer string).
        offs: list[int] = []
        at = self._strings.find(wanted, 1)
        while at >= 0:
            offs.append(at)
            at = self._strings.find(wanted, at + 1)
        if offs:
            named = np.isin(self._name_offs, np.asarray(offs, dtype=np.uint32))
            for kind in kinds:
                hits = np.flatnonzero(named & (self._kinds == kind))
                if hits.size:
                    found = self._type(int(hits[0]) + 1)
                    assert found is not None
                    return found
        raise BtfError(f"type {name!r} not in BTF")

    def type_size(self, type_id: int) -> int:
        """Size in bytes of a type, following typedefs and qualifiers."""
        for _ in range(64):
            t = self._type(type_id)
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

    def member(self, struct_name: str, member: str) -> MemberInfo:
        """Offset and size of ``struct_name.member`` (searching through anonymous structs and unions)."""
        found = self._member_in(self._find((_STRUCT, _UNION), struct_name), member, 0)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member!r} in this kernel's BTF")
        return found

    def sized_member(self, struct_name: str, member: str, size: int) -> MemberInfo:
        """:meth:`member`, checked to be a whole (not bitfield) member of ``size`` bytes: what a program
        that loads it with a fixed-size read at its offset needs."""
        info = self.member(struct_name, member)
        if info.size != size or info.bitfield_size:
            raise BtfError(f"unexpected layout of {struct_name}.{member}: {info}")
        return info

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
            t = self._type(type_id)
            if t is None or t.kind not in _MODIFIERS:
                return t
            type_id = t.size_or_type
        return None

    def enum(self, name: str) -> dict[str, int]:
        """Enumerator names to values of ``enum name``."""
        return dict(self._find((_ENUM, _ENUM64), name).enum_values)

    def _type_name(self, type_id: int) -> str:
        """A C spelling of a type (``struct sk_buff *``, ``enum skb_drop_reason``, ``int``); qualifiers
        and typedefs are kept by name (``const struct sock *``, ``u32``); ``void`` for type id 0."""
        t = self._type(type_id)
        if t is None:
            return "void"
        if t.kind == _PTR:
            return self._type_name(t.size_or_type) + " *"
        if t.kind == _CONST:
            return "const " + self._type_name(t.size_or_type)
        if t.kind == _VOLATILE:
            return "volatile " + self._type_name(t.size_or_type)
        if t.kind in (_RESTRICT, _TYPE_TAG):
            return self._type_name(t.size_or_type)
        if t.kind == _FUNC_PROTO:
            return "function"
        return _KIND_PREFIX.get(t.kind, "") + (t.name or "(anon)")

    def tracepoint_args(self, name: str) -> list[str]:
        """The arguments a RAW tracepoint program gets for tracepoint ``name`` (``ctx->args[i]``), as C type
        spellings, read from the ``btf_trace_<name>`` typedef (a pointer to the probe's function prototype,
        whose first parameter is the tracepoint's private ``void *`` data, not passed to the program)."""
        typedef = self._find((_TYPEDEF,), f"btf_trace_{name}")
        ptr = self._resolve(typedef.size_or_type)
        if ptr is None or ptr.kind != _PTR:
            raise BtfError(f"btf_trace_{name} is not a function pointer")
        proto_id = ptr.size_or_type
        proto = self._type(proto_id)
        if proto is None or proto.kind != _FUNC_PROTO:
            raise BtfError(f"btf_trace_{name} does not point to a function prototype")
        pos = self._offsets[proto_id]
        vlen = struct.unpack_from("<I", self._data, pos + 4)[0] & 0xFFFF
        params = [struct.unpack_from("<II", self._data, pos + 12 + 8 * i)[1] for i in range(vlen)]
        return [self._type_name(p) for p in params[1:]]


def kernel_btf(path: Path = VMLINUX) -> Btf:
    """The running kernel's BTF (about 0.1 s; about 7 MB while referenced).

    Not cached: receivers read a few offsets at start and then let it go, so the agent does not keep
    the blob for its whole life.
    """
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc} (kernel built without CONFIG_DEBUG_INFO_BTF?)") from exc
    return Btf(blob)


def require_tracepoint_args(btf: Btf, name: str, expected: list[str]) -> None:
    """Raise :class:`BtfError` unless raw tracepoint ``name`` starts with the ``expected`` arguments
    (compared without ``const``/``volatile``), so a program reading ``ctx->args[i]`` never misreads a
    kernel whose tracepoint changed."""
    try:
        actual = btf.tracepoint_args(name)
    except BtfError as exc:
        raise BtfError(f"raw tracepoint {name}: {exc}") from exc

    def bare(spelling: str) -> str:
        return " ".join(w for w in spelling.split() if w not in ("const", "volatile"))

    if [bare(a) for a in actual[: len(expected)]] != [bare(e) for e in expected]:
        raise BtfError(
            f"raw tracepoint {name} has arguments ({', '.join(actual)}) in this kernel; the program "
            f"expects ({', '.join(expected)}, ...)"
        )
