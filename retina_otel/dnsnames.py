"""DNS query type and response code names, one table for the whole agent (the DNS receiver's records,
flowmetrics' and hubblemetrics' labels, the observer's text): dnspython's registry.

``type_name(28) == "AAAA"`` (``TYPE65280`` for an unassigned type, RFC 3597's form);
``rcode_name(3) == "NXDOMAIN"`` (the number as text for an unassigned code). Both are cached, so a
per-row call costs a dictionary look-up. Hubble's metrics name response codes in words instead
(``hubble_rcode_text(3) == "Non-Existent Domain"``); that table is here too.
"""

from __future__ import annotations

from functools import lru_cache

import dns.rcode
import dns.rdatatype

__all__ = ["HUBBLE_RCODE_TEXT", "hubble_rcode_text", "rcode_name", "type_name"]


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


# Hubble's rcode label values (its pkg/hubble/metrics/dns/rcode.go).
HUBBLE_RCODE_TEXT = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
    5: "Query Refused", 6: "Name Exists when it should not", 7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not", 9: "Not Authorized", 10: "Name not contained in zone",
    11: "DSO-TYPE Not Implemented", 16: "Bad OPT Version", 17: "Key not recognized",
    18: "Signature out of time window", 19: "Bad TKEY Mode", 20: "Duplicate key name",
    21: "Algorithm not supported", 22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}


def hubble_rcode_text(rcode: int) -> str:
    """Hubble's words for a response code (the number as text for others)."""
    return HUBBLE_RCODE_TEXT.get(rcode) or str(rcode)
