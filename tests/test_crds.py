"""The CRDs: structural schemas, valid manifests, YAML round trip, schema and model agreement."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from retina_otel.crds import CRDS, crd_manifests, render_crds
from retina_otel.crds.capturejob import CaptureJobSpec
from retina_otel.crds.models import (
    CaptureSpec,
    MetricsConfigurationSpec,
    SpecError,
    parse_duration,
    parse_filter_entry,
    resolve_host_path,
    validate_spec,
)


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    """Paths of schema nodes that break structural-schema rules."""
    problems = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties and additionalProperties together")
    for name, sub in (schema.get("properties") or {}).items():
        problems += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += _walk(schema["additionalProperties"], f"{path}{{}}")
    for rule in schema.get("x-kubernetes-validations") or []:
        if not rule.get("rule") or not rule.get("message"):
            problems.append(f"{path}: CEL rule without rule/message")
    return problems


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c["metadata"]["name"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    assert _walk(version["schema"]["openAPIV3Schema"], crd["spec"]["names"]["kind"]) == []
    assert version["subresources"] == {"status": {}}
    assert version["additionalPrinterColumns"]
    assert crd["spec"]["group"] == "retina.sh" and version["name"] == "v1alpha1"


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c["metadata"]["name"])
def test_manifest_validates_against_kubernetes_schema(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, "1.31", strict=True)


def test_scopes_and_names() -> None:
    scopes = {c["spec"]["names"]["kind"]: c["spec"]["scope"] for c in CRDS}
    assert scopes == {"Capture": "Namespaced", "MetricsConfiguration": "Cluster",
                      "RetinaEndpoint": "Namespaced", "TracesConfiguration": "Cluster"}


def test_rendered_yaml_round_trips() -> None:
    text = render_crds()
    docs = list(yaml.safe_load_all(text))
    assert docs == crd_manifests()
    assert render_crds() == yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True, allow_unicode=True)


def test_capture_schema_carries_one_of_rules() -> None:
    capture = next(c for c in CRDS if c["spec"]["names"]["kind"] == "Capture")
    spec = capture["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    target = spec["properties"]["captureConfiguration"]["properties"]["captureTarget"]
    rules = " ".join(r["rule"] for r in target["x-kubernetes-validations"])
    assert "size() == 1" in rules and "namespaceSelector" in rules
    assert spec["required"] == ["captureConfiguration", "outputConfiguration"]


GOOD = {"captureConfiguration": {"captureTarget": {"podSelector": {"matchLabels": {"a": "b"}}},
                                 "captureOption": {"duration": "1m30s"}},
        "outputConfiguration": {"hostPath": "caps/x"}}


def test_models_accept_good_and_name_the_field_on_errors() -> None:
    spec = validate_spec(CaptureSpec, GOOD)
    assert spec.capture_configuration.capture_option.duration_seconds == 90.0
    with pytest.raises(SpecError, match=r"spec\.captureConfiguration\.captureOption\.duration"):
        validate_spec(CaptureSpec, {**GOOD, "captureConfiguration": {**GOOD["captureConfiguration"],
                                                                     "captureOption": {"duration": "soon"}}})
    with pytest.raises(SpecError, match="unknown field"):
        validate_spec(CaptureSpec, {**GOOD, "typo": 1})
    with pytest.raises(SpecError, match="exactly one of include or exclude"):
        validate_spec(MetricsConfigurationSpec, {"contextOptions": [{"metricName": "drop"}], "namespaces": {}})


def test_helpers() -> None:
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_filter_entry("198.18.0.1:80") == ("198.18.0.1", 80)
    assert parse_filter_entry("*:53") == (None, 53)
    assert parse_filter_entry("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert parse_filter_entry("2001:db8::1") == ("2001:db8::1", None)
    with pytest.raises(ValueError):
        parse_filter_entry("*:*")
    assert resolve_host_path("a/b", "/base") == "/base/a/b"
    for bad in ("/abs", "a/../b", "..", "a b", "C:\\x", "."):
        with pytest.raises(SpecError):
            resolve_host_path(bad, "/base")


def test_capture_job_spec_json_round_trip() -> None:
    text = ('{"captureName": "c", "captureNamespace": "n", "maxCaptureSizeMB": 5,'
            ' "filter": {"podIPs": ["198.18.0.1"], "sourceIPs": []}}')
    spec = CaptureJobSpec.from_env({"RETINA_CAPTURE_SPEC": text})
    assert spec.max_capture_size_mb == 5 and spec.filter.pod_ips == ["198.18.0.1"]
    assert CaptureJobSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="RETINA_CAPTURE_SPEC"):
        CaptureJobSpec.from_env({})


def test_example_manifests_are_valid() -> None:
    from pathlib import Path

    from retina_otel.crds.models import CaptureSpec as Cap

    models: dict[str, type[Any]] = {"Capture": Cap, "MetricsConfiguration": MetricsConfigurationSpec}
    seen = 0
    for path in sorted((Path(__file__).parent.parent / "operator" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] in models:
                validate_spec(models[doc["kind"]], doc["spec"])
                seen += 1
    assert seen == 4
