"""Capture filters -> one tcpdump (pcap-filter) expression, validated before tcpdump ever runs.

Retina's ``filters.include`` / ``filters.exclude`` entries take the forms ``IP``, ``IP:port``,
``*:port`` and ``IP:*``; IPv6 addresses are written bare (``2001:db8::1``) or, with a port, in
brackets (``[2001:db8::1]:443``). A port may also be a range (``8000-8080``). They become
``(inc1 or inc2) and not (exc1 or exc2)``. That group, ``src host`` for sourceIPs, ``dst host`` for
destinationIPs, ``host`` for the target pods' IPs and the raw pcapFilter are joined with ``and``.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .spec import CaptureJobSpec, SpecError

__all__ = [
    "EndpointFilter",
    "FilterError",
    "build_filter",
    "check_compiles",
    "endpoint_group",
    "parse_endpoint",
]

MAX_EXPRESSION_LENGTH = 16384


class FilterError(SpecError):
    """A filter entry or the combined expression is invalid; the message names the culprit."""


@dataclass(frozen=True)
class EndpointFilter:
    """One include/exclude entry; ``None`` means any."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    port_low: int | None
    port_high: int | None

    def expression(self) -> str:
        parts = []
        if self.ip is not None:
            parts.append(f"host {self.ip.compressed}")
        if self.port_low is not None:
            if self.port_high is not None and self.port_high != self.port_low:
                parts.append(f"portrange {self.port_low}-{self.port_high}")
            else:
                parts.append(f"port {self.port_low}")
        return "(" + " and ".join(parts) + ")"


def _parse_ip(text: str, entry: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise FilterError(f"filter {entry!r}: {text!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise FilterError(f"filter {entry!r}: scoped IPv6 addresses (%zone) are not supported")
    return addr


_PORT_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


def _parse_port(text: str, entry: str) -> tuple[int, int]:
    match = _PORT_RE.match(text)
    if not match:
        raise FilterError(f"filter {entry!r}: port {text!r} is not a number or a range such as 8000-8080")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    for port in (low, high):
        if not 0 <= port <= 65535:
            raise FilterError(f"filter {entry!r}: port {port} is outside 0-65535")
    if high < low:
        raise FilterError(f"filter {entry!r}: port range {text!r} ends before it starts")
    return low, high


def parse_endpoint(entry: str) -> EndpointFilter:
    """Parse ``IP``, ``IP:port``, ``*:port``, ``IP:*``, ``port``, ``[v6]:port``, ``[v6]`` or bare IPv6."""
    text = entry.strip()
    if not text:
        raise FilterError("empty filter entry")
    ip_text: str
    port_text: str
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise FilterError(f"filter {entry!r}: missing ']' after the IPv6 address")
        ip_text, rest = text[1:end], text[end + 1 :]
        if rest == "":
            port_text = "*"
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise FilterError(f"filter {entry!r}: expected ':port' after ']'")
        if ip_text != "*" and not isinstance(_parse_ip(ip_text, entry), ipaddress.IPv6Address):
            raise FilterError(f"filter {entry!r}: only IPv6 addresses go in brackets")
    elif text.count(":") > 1:
        ip_text, port_text = text, "*"  # bare IPv6 address
    elif ":" in text:
        ip_text, port_text = text.split(":", 1)
    elif _PORT_RE.match(text):
        ip_text, port_text = "*", text  # a bare port, as Retina reads an entry without '.'
    else:
        ip_text, port_text = text, "*"
    if ip_text in ("*", "") and port_text in ("*", ""):
        raise FilterError(f"filter {entry!r}: matches everything; give an IP, a port or both")
    ip = None if ip_text in ("*", "") else _parse_ip(ip_text, entry)
    if port_text in ("*", ""):
        return EndpointFilter(ip, None, None)
    low, high = _parse_port(port_text, entry)
    return EndpointFilter(ip, low, high)


def endpoint_group(entries: Iterable[str]) -> str:
    """``(e1 or e2 ...)`` for a list of include or exclude entries; ``""`` when empty. Deduplicated."""
    parsed = list(dict.fromkeys(parse_endpoint(e) for e in entries if e.strip()))
    if not parsed:
        return ""
    return "(" + " or ".join(p.expression() for p in parsed) + ")"


def _host_group(keyword: str, ips: Sequence[str], what: str) -> str:
    exprs = []
    for raw in dict.fromkeys(ip.strip() for ip in ips):
        if not raw:
            continue
        try:
            if "/" in raw:  # a CIDR (the CRD accepts them for sourceIPs/destinationIPs): "src net ..."
                net = ipaddress.ip_network(raw, strict=False)
                exprs.append(f"{keyword.replace('host', 'net')} {net.compressed}")
                continue
            addr = ipaddress.ip_address(raw)
        except ValueError:
            raise FilterError(f"{what} {raw!r} is not an IPv4 or IPv6 address or CIDR") from None
        exprs.append(f"{keyword} {addr.compressed}")
    if not exprs:
        return ""
    return "(" + " or ".join(exprs) + ")"


def _check_raw(expr: str) -> str:
    text = expr.strip()
    if not text:
        return ""
    if text.startswith("-"):
        raise FilterError("pcapFilter must be a filter expression, not tcpdump options (it starts with '-')")
    if any(ch in text for ch in "\n\r\x00") or not text.isprintable():
        raise FilterError("pcapFilter must be a single line of printable characters")
    if text.count("(") != text.count(")"):
        raise FilterError("pcapFilter has unbalanced parentheses")
    return text


def build_filter(spec: CaptureJobSpec) -> str:
    """The full tcpdump expression for ``spec`` ("" captures everything). Raises :class:`FilterError`."""
    include = endpoint_group(spec.include_filters)
    exclude = endpoint_group(spec.exclude_filters)
    if include and exclude:
        endpoints = f"{include} and not {exclude}"
    elif exclude:
        endpoints = f"not {exclude}"
    else:
        endpoints = include
    parts = [
        endpoints,
        _host_group("src host", spec.source_ips, "sourceIP"),
        _host_group("dst host", spec.destination_ips, "destinationIP"),
        _host_group("host", spec.pod_ips, "pod IP"),
    ]
    raw = _check_raw(spec.pcap_filter or "")
    if raw:
        parts.append(f"({raw})")
    parts = [p for p in parts if p]
    if len(parts) == 1 and parts[0].startswith("not "):
        expr = parts[0]
    else:
        expr = " and ".join(f"({p})" if p.startswith("not ") else p for p in parts)
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise FilterError(f"the combined filter is {len(expr)} characters; the limit is {MAX_EXPRESSION_LENGTH}")
    return expr


def check_compiles(expr: str, *, tcpdump: str = "tcpdump", netns: str | None = None, timeout: float = 20) -> None:
    """Compile ``expr`` with ``tcpdump -d`` (no capture); raise :class:`FilterError` with tcpdump's reason."""
    if not expr:
        return
    args = [tcpdump, "-d", "-i", "any", "--", expr]
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise FilterError(f"cannot check the filter: {tcpdump!r} is not installed") from None
    except subprocess.TimeoutExpired:
        raise FilterError(f"tcpdump took more than {timeout:.0f}s to compile the filter") from None
    if proc.returncode != 0:
        reasons = [
            line.removeprefix("tcpdump: ").strip()
            for line in proc.stderr.splitlines()
            if line.strip() and "data link type" not in line
        ]
        reason = "; ".join(reasons) or f"exit status {proc.returncode}"
        raise FilterError(f"tcpdump rejects the filter {expr!r}: {reason}")
