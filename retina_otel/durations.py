"""Go/Kubernetes duration strings (``500ms``, ``30s``, ``1h30m``), as the CRDs and the capture spec take them."""

from __future__ import annotations

import re

__all__ = ["DURATION_PATTERN", "parse_duration"]

#: Go's ``time.Duration`` text form, as Retina's CRD pattern has it (what :func:`parse_duration` accepts).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``1m30s`` or ``500ms``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"duration {text!r} is not a duration like 30s, 1m or 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
