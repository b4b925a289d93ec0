"""The per-flow RTT table of the tcplatency receiver, and its vectorised join with flow records.

A flow key is the local socket's view: source, destination (16 bytes each), source port, destination
port. The table keeps its keys as rows of five 64-bit words (the addresses as two words each, both
ports in one) sorted by a 64-bit hash of them, and a directory of the hashes' top bits (about one key
per bucket): a record's hash finds its bucket with one read and its key in the bucket by stepping over
the few hashes below it, and every match is confirmed on the five words. A binary search (what
``searchsorted`` does) took ~17 dependent reads per row, twice as long. The columns of the records are
used as they are (no packed key is built per row, and the reverse orientation is the same words in
another order): under many short connections this join runs on every flow report, so its cost per row
is the agent's cost per connection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["KEY_BYTES", "LatencyTable"]

KEY_BYTES = 36
"""Bytes of a flow key in the kernel's table: source, destination, source port, destination port (LE u16)."""

_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)
_ROTATE_LEFT, _ROTATE_RIGHT = np.uint64(29), np.uint64(35)
_FMIX = np.array([0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53], dtype=np.uint64)
_FMIX_SHIFT = np.uint64(33)
_MAX_STEPS = 8
"""Steps through a bucket before the join falls back to a binary search for the rows still in it."""

_U64 = npt.NDArray[np.uint64]
Words = tuple[_U64, _U64, _U64, _U64, _U64]
"""A key as five columns: source words 0 and 1, destination words 0 and 1, ports (source | destination << 16)."""


def _hash(words: Words) -> _U64:
    """A 64-bit hash per key; equal keys hash equal, and a match is always confirmed on the words.

    The directory indexes the top bits, so every input bit must reach them: the words are mixed by
    multiply-and-rotate, then finalised with MurmurHash3's fmix64 (without it, keys that differ only in
    a port, such as every connection between the same two pods, shared a handful of top-bit patterns)."""
    h: _U64 = words[4] * _MULTIPLIERS[4]
    for i in range(4):
        h ^= words[i] * _MULTIPLIERS[i]
        h = (h << _ROTATE_LEFT) | (h >> _ROTATE_RIGHT)
    h ^= h >> _FMIX_SHIFT
    h *= _FMIX[0]
    h ^= h >> _FMIX_SHIFT
    h *= _FMIX[1]
    h ^= h >> _FMIX_SHIFT
    return h


def _address_words(addresses: npt.NDArray[Any]) -> tuple[_U64, _U64]:
    """16-byte addresses (``V16`` rows) as their two little-endian 64-bit words."""
    pairs = np.ascontiguousarray(addresses).view("<u8").reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _ports(first: npt.NDArray[Any], second: npt.NDArray[Any]) -> _U64:
    return first.astype(np.uint64) | (second.astype(np.uint64) << np.uint64(16))


class LatencyTable:
    """A snapshot of the per-flow table: (srtt_us, handshake_us) by flow.

    Keys are from the local socket's point of view; :meth:`join` tries both orientations, so a record
    seen in either direction finds its flow.
    """

    def __init__(self, keys: npt.NDArray[Any], values: npt.NDArray[Any]) -> None:
        """``keys``: the kernel's key records (first :data:`KEY_BYTES` bytes are the flow key);
        ``values``: records with ``srtt_us`` and ``handshake_us``."""
        raw = np.ascontiguousarray(keys.view(np.uint8).reshape(len(keys), keys.dtype.itemsize)[:, :KEY_BYTES])
        words = raw[:, :32].copy().view("<u8")
        tail = raw[:, 32:].copy().view("<u4")[:, 0].astype(np.uint64)
        columns: Words = (words[:, 0], words[:, 1], words[:, 2], words[:, 3], tail)
        hashes = _hash(columns)
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._rows = np.stack(columns, axis=1)[order]  # (n, 5): one row's words are one cache line
        # Directory: keys whose hash has top bits b are self._hashes[start[b]:start[b + 1]].
        bits = max(int(len(keys) - 1).bit_length(), 1)
        self._shift = np.uint64(64 - bits)
        buckets = (self._hashes >> self._shift).astype(np.int64)
        self._start = np.searchsorted(buckets, np.arange((1 << bits) + 1)).astype(np.int32)
        self._srtt = np.asarray(values["srtt_us"], np.uint32)[order] if len(keys) else np.zeros(0, np.uint32)
        self._handshake = np.asarray(values["handshake_us"], np.uint32)[order] if len(keys) else np.zeros(0, np.uint32)

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def largest_bucket(self) -> int:
        """Keys in the directory's fullest bucket (a join steps through up to this many per row)."""
        return int(np.diff(self._start).max()) if len(self._hashes) else 0

    def _find(self, words: Words) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        hashes = _hash(words)
        bucket = (hashes >> self._shift).astype(np.intp)
        idx = self._start[bucket].astype(np.intp)
        end = self._start[bucket + 1]
        # Step each row over the smaller hashes of its bucket (a bucket holds ~1 key; rows leave the
        # active set as soon as they reach their hash or their bucket's end).
        active = np.flatnonzero(idx < end)
        for _step in range(_MAX_STEPS):
            if not active.size:
                break
            active = active[self._hashes[idx[active]] < hashes[active]]
            idx[active] += 1
            active = active[idx[active] < end[active]]
        else:  # rows still in a long bucket (a degenerate key set): a binary search bounds the cost
            idx[active] = np.searchsorted(self._hashes, hashes[active])
        np.minimum(idx, len(self._hashes) - 1, out=idx)
        # Confirm on the words only where the hash matched (a row of the other orientation mostly does not).
        candidates = np.flatnonzero(self._hashes[idx] == hashes)
        query = np.stack([word[candidates] for word in words], axis=1)
        confirmed = candidates[(self._rows[idx[candidates]] == query).all(axis=1)]
        found = np.zeros(len(hashes), np.bool_)
        found[confirmed] = True
        srtt = np.zeros(len(hashes), np.uint32)
        handshake = np.zeros(len(hashes), np.uint32)
        at = idx[confirmed]
        srtt[confirmed] = self._srtt[at]
        handshake[confirmed] = self._handshake[at]
        return found, srtt, handshake

    def join(
        self, src: npt.NDArray[Any], dst: npt.NDArray[Any], sport: npt.NDArray[Any], dport: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], npt.NDArray[np.bool_]]:
        """For flows given as columns (16-byte addresses, ports): srtt_us, handshake_us and whether the
        flow is known. RTT of the socket in the row's orientation (else the other's); the handshake of
        whichever end opened the connection (both ends are here when both are pods of this node)."""
        n = len(src)
        if not n or not len(self._hashes):
            zeros = np.zeros(n, np.uint32)
            return zeros, zeros, np.zeros(n, np.bool_)
        s0, s1 = _address_words(src)
        d0, d1 = _address_words(dst)
        f_found, f_srtt, f_handshake = self._find((s0, s1, d0, d1, _ports(sport, dport)))
        r_found, r_srtt, r_handshake = self._find((d0, d1, s0, s1, _ports(dport, sport)))
        srtt = np.where(f_found & (f_srtt > 0), f_srtt, np.where(r_found, r_srtt, f_srtt))
        return srtt, np.maximum(f_handshake, r_handshake), f_found | r_found

    def lookup(self, src: bytes, dst: bytes, sport: int, dport: int) -> tuple[int, int] | None:
        """One flow's (srtt_us, handshake_us), or None when neither orientation is in the table."""
        srtt, handshake, known = self.join(
            np.array([src], "V16"), np.array([dst], "V16"), np.array([sport], np.uint16), np.array([dport], np.uint16)
        )
        return (int(srtt[0]), int(handshake[0])) if known[0] else None
