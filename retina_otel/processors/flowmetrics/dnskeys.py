"""DNS label keys of flowmetrics: per row, an id of the (query_type, query) labels of a request or the
(return_code, query_type, query, response, num_response) labels of a response, and the label tables.

Names come from the row's ``batch.dns`` entry when a receiver wrote one, else from the numeric columns
through :mod:`retina_otel.dnsnames`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from retina_otel.dnsnames import rcode_name
from retina_otel.dnsnames import type_name as qtype_name
from retina_otel.flows import FlowBatch
from retina_otel.processors.flowmetrics.columns import BatchColumns
from retina_otel.processors.flowmetrics.labels import I64, LabelValues

__all__ = ["request_keys", "response_keys"]


def request_keys(batch: FlowBatch, cols: BatchColumns, rows: I64) -> tuple[I64, list[LabelValues]]:
    """Per-row id (indexed by row) of the (query_type, query) labels of DNS requests, and the labels.

    The only Python loop over rows, and only over DNS rows: their names live in ``batch.dns``."""
    extras: Sequence[Mapping[str, Any] | None] = batch.dns or ()
    n_extra = len(extras)
    ids: dict[LabelValues, int] = {}
    out: list[int] = []
    for row, qt in zip(rows.tolist(), cols.take("dns_qtype", rows).tolist(), strict=True):
        extra = extras[row] if row < n_extra else None
        if extra:
            key = (str(extra.get("query_type") or "") or qtype_name(qt), str(extra.get("query") or ""))
        else:
            key = (qtype_name(qt), "")
        out.append(ids.setdefault(key, len(ids)))
    return _by_row(cols.n, rows, out), list(ids)


def response_keys(
    batch: FlowBatch, cols: BatchColumns, rows: I64
) -> tuple[I64, list[LabelValues], I64, list[LabelValues]]:
    """Like :func:`request_keys` for responses: (return_code, query_type, query, response, num_response)
    ids and labels, then the (return_code, query_type) ids and labels of the latency histogram."""
    extras: Sequence[Mapping[str, Any] | None] = batch.dns or ()
    n_extra = len(extras)
    ids: dict[LabelValues, int] = {}
    lat_ids: dict[LabelValues, int] = {}
    out: list[int] = []
    lat_out: list[int] = []
    for row, qt, rc, count in zip(
        rows.tolist(),
        cols.take("dns_qtype", rows).tolist(),
        cols.take("dns_rcode", rows).tolist(),
        cols.take("dns_answer_count", rows).tolist(),
        strict=True,
    ):
        extra = extras[row] if row < n_extra else None
        if extra:
            rcode = str(extra.get("return_code") or "") or rcode_name(rc)
            qtype = str(extra.get("query_type") or "") or qtype_name(qt)
            answers = extra.get("answers")
            key = (rcode, qtype, str(extra.get("query") or ""),
                   ",".join(map(str, answers)) if answers else "", str(count))
        else:
            rcode = rcode_name(rc)
            qtype = qtype_name(qt)
            key = (rcode, qtype, "", "", str(count))
        out.append(ids.setdefault(key, len(ids)))
        lat_out.append(lat_ids.setdefault((rcode, qtype), len(lat_ids)))
    return _by_row(cols.n, rows, out), list(ids), _by_row(cols.n, rows, lat_out), list(lat_ids)


def _by_row(n: int, rows: I64, ids: list[int]) -> I64:
    """The ids of ``rows`` spread over all ``n`` rows of the batch (0 elsewhere, never read)."""
    codes = np.zeros(n, dtype=np.int64)
    codes[rows] = ids
    return codes
