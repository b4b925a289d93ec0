"""Typed host extensions: services one component offers the others, each registered once under an id.

A component type declares what it provides in its factory (``Factory.provides``: a tuple of
:class:`ExtensionKey`), so a config where two different components would provide the same extension is
rejected before anything is built (``retina-otel validate``, exit 2). When the agent creates the
component it asks ``component.extensions()`` for the services and registers them; a consumer asks
``host.get_extension(KEY)`` and gets an instance of the key's type, or ``None``.

The same component id in several pipelines (a processor is created once per pipeline) registers its
extensions once: the first instance's services are the shared ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

__all__ = ["DuplicateExtensionError", "ExtensionKey", "ExtensionRegistry"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ExtensionKey(Generic[T]):
    """The id of an extension and the type its service has (checked when registered)."""

    name: str
    type: type[T]

    def __str__(self) -> str:
        return self.name


class DuplicateExtensionError(ValueError):
    """Two components offer the same extension."""


class ExtensionRegistry:
    """Extensions by name; each name registered by one owner (a component id)."""

    def __init__(self) -> None:
        self._services: dict[str, tuple[str, object]] = {}

    def register(self, key: ExtensionKey[Any] | str, service: object, owner: str) -> None:
        name = key if isinstance(key, str) else key.name
        if not isinstance(key, str) and not isinstance(service, key.type):
            raise TypeError(f"extension {name!r} of {owner} is a {type(service).__name__}, not a {key.type.__name__}")
        found = self._services.get(name)
        if found is not None:
            if found[0] == owner:
                return  # another pipeline's instance of the same component: the first one's service is shared
            raise DuplicateExtensionError(f"extension {name!r} offered by both {found[0]} and {owner}")
        self._services[name] = (owner, service)

    def register_all(self, services: Mapping[ExtensionKey[Any] | str, object], owner: str) -> None:
        for key, service in services.items():
            self.register(key, service, owner)

    @overload
    def get(self, key: ExtensionKey[T]) -> T | None: ...

    @overload
    def get(self, key: str) -> object | None: ...

    def get(self, key: ExtensionKey[Any] | str) -> object | None:
        found = self._services.get(key if isinstance(key, str) else key.name)
        if found is None:
            return None
        service: object = found[1]
        if not isinstance(key, str) and not isinstance(service, key.type):
            return None
        return service

    def owner(self, name: str) -> str | None:
        found = self._services.get(name)
        return None if found is None else found[0]
