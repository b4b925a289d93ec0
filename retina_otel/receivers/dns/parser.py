"""A compact DNS wire-format parser that survives any byte string.

Only what the receiver reports is decoded: the header, the first question (name and type), and the
answer section's A/AAAA addresses and CNAME/PTR/NS/DNAME targets; other records are skipped by
length. Every read is bounds-checked and compression pointers must point strictly backwards (with a
jump budget), so hostile input ends in :class:`DnsParseError`, never another exception or a loop.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

__all__ = ["DnsMessage", "DnsParseError", "parse_message", "parse_tcp_payload"]

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QTAIL = struct.Struct("!HH")
_MAX_NAME = 255
_MAX_JUMPS = 32
_MAX_ANSWERS = 64  # answers decoded per message; the count in the header is reported as is
_NAME_TYPES = frozenset({2, 5, 12, 39})  # NS, CNAME, PTR, DNAME


class DnsParseError(ValueError):
    """The bytes are not a well-formed DNS message (or not the part of one this parser needs)."""


class DnsMessage(NamedTuple):
    id: int
    is_response: bool
    opcode: int
    rcode: int
    query: str  # first question's name, with the trailing dot ("." for the root); "" without a question
    qtype: int  # first question's type, 0 without a question
    answers: tuple[str, ...]  # A/AAAA addresses and name targets of the answer section, in order
    answer_count: int  # ANCOUNT from the header


def _name(data: bytes, pos: int) -> tuple[str, int]:
    """Decode the name at ``pos``; returns it and the position after it in the original stream."""
    labels: list[str] = []
    length = 0
    end = -1  # position after the name where it started (before the first jump)
    jumps = 0
    limit = len(data)
    floor = pos  # a pointer must point before the label that holds it
    while True:
        if pos >= limit:
            raise DnsParseError("name runs past the end")
        size = data[pos]
        if size == 0:
            pos += 1
            break
        tag = size & 0xC0
        if tag == 0xC0:
            if pos + 1 >= limit:
                raise DnsParseError("truncated compression pointer")
            target = ((size & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise DnsParseError("compression pointer does not point backwards")
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise DnsParseError("too many compression pointers")
            if end < 0:
                end = pos + 2
            pos = floor = target
            continue
        if tag:
            raise DnsParseError(f"unsupported label type {tag:#x}")
        start = pos + 1
        pos = start + size
        if pos > limit:
            raise DnsParseError("label runs past the end")
        length += size + 1
        if length > _MAX_NAME:
            raise DnsParseError("name longer than 255 bytes")
        labels.append(data[start:pos].decode("latin-1"))
    return ".".join(labels) + ".", (end if end >= 0 else pos)


def parse_message(data: bytes) -> DnsMessage:
    """Parse one DNS message (UDP payload, or one TCP message without its length prefix)."""
    n = len(data)
    if n < _HEADER.size:
        raise DnsParseError("shorter than a DNS header")
    ident, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data, 0)
    pos = _HEADER.size
    query, qtype = "", 0
    for i in range(min(qdcount, 4)):  # more than one question does not occur in practice
        name, pos = _name(data, pos)
        if pos + 4 > n:
            raise DnsParseError("truncated question")
        if i == 0:
            query, qtype = name, _QTAIL.unpack_from(data, pos)[0]
        pos += 4
    if qdcount > 4:
        raise DnsParseError("too many questions")
    answers: list[str] = []
    for _ in range(min(ancount, _MAX_ANSWERS)):
        _owner, pos = _name(data, pos)
        if pos + _RR.size > n:
            raise DnsParseError("truncated resource record")
        rtype, _rclass, _ttl, rdlength = _RR.unpack_from(data, pos)
        pos += _RR.size
        end = pos + rdlength
        if end > n:
            raise DnsParseError("record data runs past the end")
        if rtype == 1 and rdlength == 4:
            answers.append(socket.inet_ntop(socket.AF_INET, data[pos:end]))
        elif rtype == 28 and rdlength == 16:
            answers.append(socket.inet_ntop(socket.AF_INET6, data[pos:end]))
        elif rtype in _NAME_TYPES:
            target, _ = _name(data[:end], pos)
            answers.append(target)
        pos = end
    return DnsMessage(
        id=ident,
        is_response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=flags & 0xF,
        query=query,
        qtype=qtype,
        answers=tuple(answers),
        answer_count=ancount,
    )


def parse_tcp_payload(payload: bytes) -> tuple[list[DnsMessage], int]:
    """Messages of a TCP segment's payload (each behind a 2-byte length). Returns the complete, well-formed
    messages and how many bytes at the end were left over (a message continued in a later segment)."""
    messages: list[DnsMessage] = []
    pos, n = 0, len(payload)
    while pos + 2 <= n:
        size = (payload[pos] << 8) | payload[pos + 1]
        if pos + 2 + size > n:
            break
        messages.append(parse_message(payload[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    return messages, n - pos
