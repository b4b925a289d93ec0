"""Label tables of flowmetrics series and how a grouping's label tuples are put together.

A label column is a table of label tuples and a code per row into it; :func:`compose` joins the
columns of a grouping into one tuple per group and :func:`merge` adds the group sums into a series.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import add, itemgetter

import numpy as np
import numpy.typing as npt

from retina_otel.flows import STRINGS
from retina_otel.processors.flowmetrics.endpoints import UNKNOWN

__all__ = [
    "DIRECTION_LABELS",
    "I64",
    "IS_REPLY_LABELS",
    "LabelColumn",
    "LabelValues",
    "compose",
    "merge",
    "pick",
    "reason_column",
]

LabelValues = tuple[str, ...]
I64 = npt.NDArray[np.int64]
LabelColumn = tuple[Sequence[LabelValues], I64 | None]  # label table, codes per row (None: all table[0])

DIRECTION_LABELS: tuple[LabelValues, ...] = (("unknown",), ("ingress",), ("egress",))
IS_REPLY_LABELS: tuple[LabelValues, ...] = (("false",), ("true",))


def pick(table: Sequence[LabelValues], codes: list[int]) -> list[LabelValues]:
    """``[table[c] for c in codes]``, in C."""
    if len(codes) <= 1:
        return [table[c] for c in codes]
    return list(itemgetter(*codes)(table))


def compose(rep: I64, columns: Sequence[LabelColumn]) -> list[LabelValues]:
    """Each group's label tuple: per column, ``table[codes[rep[g]]]`` (``table[0]`` when codes is None),
    concatenated in column order."""
    size = rep.shape[0]
    if size == 0:
        return []
    used = [(table, codes) for table, codes in columns if codes is not None or table[0]]
    if not used:
        return [()] * size
    picks = [pick(table, codes[rep].tolist()) if codes is not None else [table[0]] * size for table, codes in used]
    out = picks[0]
    for more in picks[1:]:
        out = list(map(add, out, more))
    return out


def merge(series: dict[LabelValues, float], labels: Sequence[LabelValues], sums: npt.NDArray[np.float64]) -> None:
    """Add the non-zero group sums into a metric's series.

    The groups of one grouping have distinct label tuples (context and reason codes are merged where
    their labels agree), so an empty series takes them as they are."""
    nonzero = np.flatnonzero(sums)
    if nonzero.shape[0] < sums.shape[0]:
        labels = pick(labels, nonzero.tolist())
        sums = sums[nonzero]
    if not series:
        series.update(zip(labels, sums.tolist(), strict=True))
        return
    get = series.get
    for lv, amount in zip(labels, sums.tolist(), strict=True):
        series[lv] = get(lv, 0.0) + amount


def reason_column(reasons: npt.NDArray[np.integer]) -> tuple[I64, int, list[LabelValues]]:
    """Dense codes, their count and labels for ``drop_reason`` ids (names from STRINGS, 0 = unknown);
    ids with the same label (0 and ids past the table) share a code."""
    uniq, inverse = np.unique(reasons, return_inverse=True)
    names = STRINGS.names()
    distinct: dict[LabelValues, int] = {}
    merged = [distinct.setdefault((names[r] if 0 < r < len(names) else UNKNOWN,), len(distinct))
              for r in uniq.tolist()]
    codes = np.asarray(merged, dtype=np.int64)[inverse.reshape(-1)]
    return codes, len(distinct), list(distinct)

