"""DNS query type and response code names, one table for the whole agent (the DNS receiver's records,
flowmetrics' and hubblemetrics' labels, the observer's text): dnspython's registry.

``type_name(28) == "AAAA"`` (``TYPE65280`` for an unassigned type, RFC 3597's form);
``rcode_name(3) == "NXDOMAIN"`` (the number as text for an unassigned code). Both are cached, so a
per-row call costs a dictionary look-up.
"""

from __future__ import annotations

from functools import lru_cache

import dns.rcode
import dns.rdatatype

__all__ = ["rcode_name", "type_name"]


@lru_cache(maxsize=1024)
def type_name(qtype: int) -> str:
    """``A``, ``AAAA``, ``HTTPS``, ... (``TYPE<n>`` for unassigned values)."""
    return str(dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)))


@lru_cache(maxsize=256)
def rcode_name(rcode: int) -> str:
    """``NOERROR``, ``NXDOMAIN``, ``SERVFAIL``, ... (the number as text for unassigned values)."""
    try:
        return str(dns.rcode.to_text(dns.rcode.Rcode(rcode)))
    except ValueError:
        return str(rcode)
