"""Retina's drop reasons, for ``reason_names: retina``: the kernel's reason mapped to the name a Retina
user's alerts and dashboards expect, with Retina's direction for it.

Retina's dropreason plugin hooks a few kernel functions (kprobes) and names the drop after the hook;
this agent reads every drop from the ``kfree_skb`` tracepoint with the kernel's own reason. The mapping
(see docs/receivers/dropreason.md for the table and what cannot be told apart):

=====================  =====================  ===========  =================================================
kernel reason          Retina reason          direction    why
=====================  =====================  ===========  =================================================
NETFILTER_DROP         IPTABLE_RULE_DROP      unknown      a netfilter verdict drop (iptables, nftables);
                                                           NAT and conntrack-confirm drops are netfilter
                                                           verdicts too and reach the tracepoint as the same
                                                           reason, so they are counted here
TCP_LISTEN_OVERFLOW    TCP_ACCEPT_BASIC       ingress      a connection the listener could not take (accept
                                                           queue full)
(any other)            UNKNOWN_DROP           unknown
=====================  =====================  ===========  =================================================

``IPTABLE_NAT_DROP``, ``CONNTRACK_ADD_DROP`` and ``TCP_CONNECT_BASIC`` are never produced: the first two
are indistinguishable from rule drops at the tracepoint, and Retina's ``TCP_CONNECT_BASIC`` counts
``connect()`` calls that fail before any packet exists, which frees no packet.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["RETINA_DIRECTIONS", "RETINA_REASONS", "ReasonNames", "retina_direction", "retina_reason"]

ReasonNames = Literal["kernel", "retina"]

RETINA_REASONS: dict[str, str] = {
    "NETFILTER_DROP": "IPTABLE_RULE_DROP",
    "TCP_LISTEN_OVERFLOW": "TCP_ACCEPT_BASIC",
}
UNKNOWN_DROP = "UNKNOWN_DROP"

RETINA_DIRECTIONS: dict[str, str] = {
    "IPTABLE_RULE_DROP": "unknown",
    "IPTABLE_NAT_DROP": "unknown",
    "CONNTRACK_ADD_DROP": "unknown",
    "TCP_CONNECT_BASIC": "egress",
    "TCP_ACCEPT_BASIC": "ingress",
    UNKNOWN_DROP: "unknown",
}
"""Retina's ``direction`` label for each of its reasons (pkg/plugin/dropreason: only the TCP hooks know it)."""


def retina_reason(kernel_reason: str) -> str:
    return RETINA_REASONS.get(kernel_reason, UNKNOWN_DROP)


def retina_direction(reason: str) -> str:
    return RETINA_DIRECTIONS.get(reason, "unknown")
