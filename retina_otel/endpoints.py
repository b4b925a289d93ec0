"""Parsing of ``host:port`` endpoints in configs, with errors that name the field."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

__all__ = ["Endpoint", "OptionalEndpoint", "checked_endpoint", "parse_endpoint"]


def parse_endpoint(endpoint: str, *, field: str = "endpoint") -> tuple[str, int]:
    """``"0.0.0.0:10093"`` -> ``("0.0.0.0", 10093)``; ``"[::]:10093"`` and ``":10093"`` work too."""
    text = endpoint.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{endpoint!r} is not host:port (e.g. 0.0.0.0:10093 or [::]:10093)")
    return host or "0.0.0.0", int(port_text)


def checked_endpoint(value: str, *, optional: bool = False) -> str:
    """``value`` when it is ``host:port`` (or empty and ``optional``); else :func:`parse_endpoint`'s error."""
    if value or not optional:
        parse_endpoint(value)
    return value


Endpoint = Annotated[str, AfterValidator(checked_endpoint)]
"""A config field holding ``host:port``."""
OptionalEndpoint = Annotated[str, AfterValidator(lambda value: checked_endpoint(value, optional=True))]
"""A config field holding ``host:port``, or empty (the endpoint is off)."""
