"""Vectorised grouping of flow rows by composite integer keys.

Every label of a metric is first an integer code per row (endpoint slot, IP code, port, direction,
drop reason id, DNS key id, ...). The codes are folded into one int64 key by mixed radix; when the
product of the radices is small compared with the number of rows the groups come from ``np.bincount``
(no sort at all), otherwise from ``np.unique``. Each group keeps one representative row, from which
the label strings are built once per group, never per row.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Grouping", "group_rows", "ip_codes"]

IntArray = npt.NDArray[np.int64]
_KEY_LIMIT = 1 << 62


class Grouping:
    """``inverse[i]`` is row i's group; ``rep[g]`` one row of group g; ``size`` the number of groups."""

    __slots__ = ("inverse", "rep", "size")

    def __init__(self, inverse: IntArray, rep: IntArray, size: int) -> None:
        self.inverse = inverse
        self.rep = rep
        self.size = size

    def sums(self, values: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
        weights = values.astype(np.float64, copy=False)
        return np.bincount(self.inverse, weights=weights, minlength=self.size).astype(np.float64, copy=False)


def _factorize(key: IntArray) -> tuple[IntArray, int]:
    uniq, inverse = np.unique(key, return_inverse=True)
    return inverse.astype(np.int64, copy=False).reshape(-1), int(uniq.shape[0])


def group_rows(n: int, parts: list[tuple[npt.NDArray[np.integer], int]]) -> Grouping:
    """Group ``n`` rows by the codes in ``parts`` (each ``(codes, radix)`` with ``0 <= codes < radix``)."""
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Grouping(empty, empty, 0)
    key = np.zeros(n, dtype=np.int64)
    product = 1
    for codes, radix in parts:
        if radix <= 1:
            continue
        if product * radix >= _KEY_LIMIT:
            key, product = _factorize(key)
        if product > 1:
            key *= radix
            key += codes
        else:
            key = codes.astype(np.int64, copy=True)
        product *= radix
    if product <= max(4 * n, 1 << 16):
        counts = np.bincount(key, minlength=product)
        present = np.flatnonzero(counts)
        remap = np.empty(product, dtype=np.int64)
        remap[present] = np.arange(present.shape[0], dtype=np.int64)
        inverse = remap[key]
        size = int(present.shape[0])
    else:
        inverse, size = _factorize(key)
    rep = np.empty(size, dtype=np.int64)
    rep[inverse] = np.arange(n, dtype=np.int64)  # any row of the group will do: they share every code
    return Grouping(inverse, rep, size)


def ip_codes(
    slot: npt.NDArray[np.integer], n_slots: int, lo: npt.NDArray[np.uint64], hi: npt.NDArray[np.uint64]
) -> tuple[IntArray, int]:
    """Codes that tell IPs apart *within* an endpoint slot: 0 for the slot's usual IP, else 1 + a code.

    A pod almost always has one address per family, so most rows agree with their slot's representative
    address and need no sort; only the others (unknown endpoints, second addresses) are factorized.
    Used together with the slot in the key, (slot, code) identifies the address exactly.
    """
    n = slot.shape[0]
    codes = np.zeros(n, dtype=np.int64)
    if n == 0:
        return codes, 1
    rep_lo = np.zeros(n_slots, dtype=np.uint64)
    rep_hi = np.zeros(n_slots, dtype=np.uint64)
    rep_lo[slot] = lo
    rep_hi[slot] = hi
    odd = np.flatnonzero((lo != rep_lo[slot]) | (hi != rep_hi[slot]))
    if odd.shape[0] == 0:
        return codes, 1
    odd_lo = lo[odd]
    odd_hi = hi[odd]
    if not odd_hi.any():
        uniq, inverse = np.unique(odd_lo, return_inverse=True)
        count = int(uniq.shape[0])
    else:
        pairs = np.stack([odd_hi, odd_lo], axis=1)
        uniq2, inverse = np.unique(pairs, axis=0, return_inverse=True)
        count = int(uniq2.shape[0])
    codes[odd] = inverse.reshape(-1).astype(np.int64) + 1
    return codes, count + 1
