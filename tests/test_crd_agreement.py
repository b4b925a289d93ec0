"""The CRDs' OpenAPI schemas (crds/schemas.py) and the pydantic models the operator and agent parse specs
with (crds/models/) accept and reject the same objects.

Cases are generated both ways from valid seeds (the example manifests and minimal specs), at every
node the schema describes: *breaking* mutations the schema forbids (another JSON type, a value outside
an enum, a number outside its bounds, a string or list too long, a required field removed) must be
rejected by the model too, and *keeping* mutations the schema allows (another enum value, a number at
its bounds, an optional field removed) must be accepted by the model too. The schema is checked with
jsonschema (OpenAPI's keywords are JSON Schema's; the ``x-kubernetes-*`` extensions are left out:
unknown fields are pruned by the API server, and CEL rules are tested in test_crds).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from retina_otel.crds import CRDS
from retina_otel.crds.models import (
    CaptureSpec,
    MetricsConfigurationSpec,
    RetinaEndpointSpec,
    TracesConfigurationSpec,
)

ROOT = Path(__file__).resolve().parents[1]
MODELS: dict[str, type[BaseModel]] = {
    "Capture": CaptureSpec,
    "MetricsConfiguration": MetricsConfigurationSpec,
    "RetinaEndpoint": RetinaEndpointSpec,
    "TracesConfiguration": TracesConfigurationSpec,
}
MINIMAL: dict[str, list[dict[str, Any]]] = {
    "RetinaEndpoint": [{"podIP": "198.18.0.7", "nodeIP": "198.18.0.1", "labels": {"app": "web"}}],
    "MetricsConfiguration": [{"contextOptions": [{"metricName": "drop", "sourceLabels": ["ip"]}],
                              "namespaces": {"include": ["default"]}}],
    "TracesConfiguration": [
        {
            "traceConfiguration": [
                {
                    "captureLevel": "FirstPacket",
                    "includeLayer7Data": False,
                    "traceTargets": [
                        {
                            "from": {"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.9.0/24"]}},
                            "to": {"podSelector": {"matchLabels": {"app": "web"}}},
                            "ports": [{"port": "80", "protocol": "TCP"}],
                            "tracePoints": ["PodToNode", "NodeToPod"],
                        }
                    ],
                }
            ],
            "outputConfiguration": {"destination": "opentelemetry", "connectionConfiguration": "otel:4317"},
        }
    ],
}


def _spec_schema(kind: str) -> dict[str, Any]:
    (crd,) = [c for c in CRDS if c["spec"]["names"]["kind"] == kind]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _seeds(kind: str) -> list[dict[str, Any]]:
    seeds = list(MINIMAL.get(kind, []))
    for path in sorted((ROOT / "operator" / "examples").glob("*.yaml")):
        seeds += [d["spec"] for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == kind]
    return seeds


Node = tuple[tuple[Any, ...], dict[str, Any], Any, bool]


def _nodes(schema: dict[str, Any], value: Any, path: tuple[Any, ...] = (), cel: bool = False) -> Iterator[Node]:
    """(path, schema node, value, under a CEL rule?) for every value of ``value`` the schema describes."""
    cel = cel or bool(schema.get("x-kubernetes-validations"))
    yield path, schema, value, cel
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            node = props.get(key) or (extra if isinstance(extra, dict) else None)
            if node is not None:
                yield from _nodes(node, sub, (*path, key), cel)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            yield from _nodes(schema["items"], sub, (*path, i), cel)


def _replace(obj: Any, path: tuple[Any, ...], new: Any, *, delete: bool = False) -> Any:
    out = copy.deepcopy(obj)
    if not path:
        return new
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return out


_OTHER_TYPE = {"string": 7, "integer": "seven", "number": "seven", "boolean": "yes", "array": {"a": 1}, "object": ["a"]}


def _mutations(schema: dict[str, Any], seed: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(description, object, schema-valid?) for the mutations of ``seed``."""
    for path, node, value, cel in _nodes(schema, seed):
        where = ".".join(map(str, path)) or "spec"
        kind = node.get("type")
        if kind in _OTHER_TYPE and path and not node.get("x-kubernetes-int-or-string"):
            yield f"{where}: {kind} -> {_OTHER_TYPE[kind]!r}", _replace(seed, path, _OTHER_TYPE[kind]), False
        if "enum" in node:
            yield f"{where}: outside enum", _replace(seed, path, "NotAValue"), False
            for other in node["enum"]:
                yield f"{where}: enum {other!r}", _replace(seed, path, other), True
        if kind == "integer" or kind == "number":
            if "minimum" in node:
                yield f"{where}: below minimum", _replace(seed, path, node["minimum"] - 1), False
                yield f"{where}: at minimum", _replace(seed, path, node["minimum"]), True
            if "maximum" in node:
                yield f"{where}: above maximum", _replace(seed, path, node["maximum"] + 1), False
                yield f"{where}: at maximum", _replace(seed, path, node["maximum"]), True
        if kind == "string" and "maxLength" in node and isinstance(value, str) and value:
            yield f"{where}: too long", _replace(seed, path, value * (node["maxLength"] // len(value) + 1)), False
        if kind == "array" and "maxItems" in node and isinstance(value, list) and value:
            yield f"{where}: too many items", _replace(seed, path, value * (node["maxItems"] // len(value) + 1)), False
        if isinstance(value, dict) and not cel:  # removals under a CEL rule: judged by the API server only
            required = set(node.get("required") or ())
            for key in value:
                yield f"{where}.{key}: removed", _replace(seed, (*path, key), None, delete=True), key not in required


def _schema_valid(schema: dict[str, Any], obj: Any) -> bool:
    return jsonschema.Draft7Validator(schema).is_valid(obj)


def _model_valid(model: type[BaseModel], obj: Any) -> bool:
    try:
        model.model_validate(obj)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_schema_and_model_agree(kind: str) -> None:
    schema, model = _spec_schema(kind), MODELS[kind]
    seeds = _seeds(kind)
    assert seeds
    disagreements: list[str] = []
    cases = 0
    for seed in seeds:
        assert _schema_valid(schema, seed) and _model_valid(model, seed), seed
        for what, obj, expected in _mutations(schema, seed):
            assert _schema_valid(schema, obj) == expected, f"generator: {what}"
            cases += 1
            if _model_valid(model, obj) != expected:
                disagreements.append(f"{what}: schema {'accepts' if expected else 'rejects'}, model does not")
    assert not disagreements, "\n".join(sorted(set(disagreements)))
    assert cases >= 5 * len(seeds)
