"""Where component types are found: built-ins by lazy import path, third parties by entry point.

Built-ins are listed as ``"module:attribute"`` strings so that importing the registry never imports
bcc, kubernetes or the OTLP stack; a factory module is imported only when a config names its type.
Third-party components register under the entry-point groups ``retina_otel.receivers``,
``retina_otel.processors``, ``retina_otel.exporters`` and ``retina_otel.connectors``.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from typing import Any

from retina_otel.component import ComponentKind, Factory

__all__ = ["BUILTIN", "available_types", "get_factory"]

BUILTIN: dict[ComponentKind, dict[str, str]] = {
    "receiver": {
        "packetforward": "retina_otel.receivers.packetforward:FACTORY",
        "linuxutil": "retina_otel.receivers.linuxutil:FACTORY",
        "packetparser": "retina_otel.receivers.packetparser:FACTORY",
        "dropreason": "retina_otel.receivers.dropreason:FACTORY",
        "tcpretrans": "retina_otel.receivers.tcpretrans:FACTORY",
        "dns": "retina_otel.receivers.dns:FACTORY",
        "tcplatency": "retina_otel.receivers.tcplatency:FACTORY",
        "nodeconnectivity": "retina_otel.receivers.nodeconnectivity:FACTORY",
        "synthetic": "retina_otel.receivers.synthetic:FACTORY",
    },
    "processor": {
        "k8sattributes": "retina_otel.processors.k8sattributes:FACTORY",
        "flowmetrics": "retina_otel.processors.flowmetrics:FACTORY",
        "hubblemetrics": "retina_otel.processors.hubblemetrics:FACTORY",
        "tcplatency": "retina_otel.processors.tcplatency:FACTORY",
        "filter": "retina_otel.processors.filter:FACTORY",
        "transform": "retina_otel.processors.transform:FACTORY",
        "ratelimit": "retina_otel.processors.ratelimit:FACTORY",
        "networks": "retina_otel.processors.networks:FACTORY",
    },
    "exporter": {
        "prometheus": "retina_otel.exporters.prometheus:FACTORY",
        "otlp": "retina_otel.exporters.otlp:FACTORY",
        "otlphttp": "retina_otel.exporters.otlp:HTTP_FACTORY",
        "debug": "retina_otel.exporters.debug:FACTORY",
        "nop": "retina_otel.exporters.nop:FACTORY",
        "observer": "retina_otel.exporters.observer:FACTORY",
    },
    "connector": {
        "flowmetrics": "retina_otel.processors.flowmetrics:CONNECTOR_FACTORY",
        "hubblemetrics": "retina_otel.processors.hubblemetrics:CONNECTOR_FACTORY",
        "spans": "retina_otel.connectors.spans:FACTORY",
    },
}

_GROUPS: dict[ComponentKind, str] = {
    "receiver": "retina_otel.receivers",
    "processor": "retina_otel.processors",
    "exporter": "retina_otel.exporters",
    "connector": "retina_otel.connectors",
}


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _builtin_paths(kind: ComponentKind) -> dict[str, str]:
    """Built-in types whose module is present in this installation."""
    found: dict[str, str] = {}
    for type_name, path in BUILTIN[kind].items():
        if importlib.util.find_spec(path.partition(":")[0]) is not None:
            found[type_name] = path
    return found


def available_types(kind: ComponentKind) -> list[str]:
    names = set(_builtin_paths(kind))
    names.update(ep.name for ep in entry_points(group=_GROUPS[kind]))
    return sorted(names)


def get_factory(kind: ComponentKind, type_name: str) -> Factory[Any] | None:
    path = _builtin_paths(kind).get(type_name)
    if path is not None:
        factory = _import(path)
    else:
        matches = [ep for ep in entry_points(group=_GROUPS[kind]) if ep.name == type_name]
        if not matches:
            return None
        factory = matches[0].load()
    if not isinstance(factory, Factory) or factory.kind != kind or factory.type != type_name:
        raise TypeError(f"{type_name!r} does not name a {kind} factory")
    return factory
