"""The configuration reference, generated from the components' pydantic models.

Each setting is documented once, where it is declared (``Field(description=...)``); ``retina-otel
config-reference`` prints this Markdown, and ``docs/configuration.md`` embeds it between markers (a
test keeps the two equal).
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from retina_otel.component import ComponentKind
from retina_otel.config import ServiceConfig
from retina_otel.registry import available_types, get_factory

__all__ = ["render_reference"]

BEGIN = "<!-- BEGIN GENERATED REFERENCE -->"
END = "<!-- END GENERATED REFERENCE -->"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple and typing.get_args(annotation)[-1:] == (Ellipsis,):
        return f"list[{_type_name(typing.get_args(annotation)[0])}]"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(see below)"
    return f"`{json.dumps(value, default=str)}`"


def _rows(model: type[BaseModel], prefix: str, nested: list[tuple[str, type[BaseModel]]]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((f"{prefix}{name}.", annotation))
        description = (field.description or "").replace("\n", " ").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type_name(annotation)} | {_default(field)} | {description} |")
    return rows


def _model_table(model: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    queue: list[tuple[str, type[BaseModel]]] = [("", model)]
    while queue:
        prefix, current = queue.pop(0)
        lines.extend(_rows(current, prefix, queue))
    return lines


def render_reference() -> str:
    """Markdown: the service section, then every component type with its settings."""
    out = ["### service", "", *_model_table(ServiceConfig), ""]
    kinds: list[ComponentKind] = ["receiver", "processor", "exporter", "connector"]
    for kind in kinds:
        out.append(f"### {kind}s")
        out.append("")
        for type_name in available_types(kind):
            try:
                factory = get_factory(kind, type_name)
            except Exception as exc:  # a component that fails to import is named, not hidden
                out.extend([f"#### `{type_name}`", "", f"(failed to load: {exc})", ""])
                continue
            if factory is None:
                continue
            out.extend([f"#### `{type_name}`", ""])
            if factory.description:
                out.extend([factory.description, ""])
            if kind == "connector":
                pairs = ", ".join(f"{a} -> {b}" for a, b in factory.connects)
                out.extend([f"Connects: {pairs}.", ""])
            else:
                out.extend([f"Pipelines: {', '.join(factory.supported_signals)}.", ""])
            out.extend([*_model_table(factory.config_model), ""])
    return "\n".join(out).rstrip() + "\n"


def write_reference(path: str = "docs/configuration.md") -> None:
    """Replace the generated block of ``path`` with the current reference."""
    from pathlib import Path

    doc = Path(path)
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{render_reference()}{END}{tail}")


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        write_reference()
    else:
        print(render_reference(), end="")
