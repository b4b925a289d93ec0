"""What every retina.sh spec model shares: the base model (CRD camelCase names, strict types), label
selectors, the errors and how a validation error is told to a user."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

#: Host directory under which a Capture's relative ``hostPath`` lands (Retina's default).
DEFAULT_HOST_PATH_BASE = "/var/log/retina/captures"

#: Kubernetes object names (DNS subdomain) and label values.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
NAME_RE = re.compile(NAME_PATTERN)


class SpecError(ValueError):
    """A spec that cannot be used; ``str()`` says what to fix."""


class CrdModel(BaseModel):
    # strict: a value of another JSON type is an error, as in the CRD's schema ("yes" is not a boolean,
    # "5" not an integer); tests/test_crd_agreement.py keeps the two in step.
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, strict=True)

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API expects it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


class LabelSelectorRequirement(CrdModel):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"matchExpressions on {self.key!r}: operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"matchExpressions on {self.key!r}: operator {self.operator} takes no values")
        return self


class LabelSelector(CrdModel):
    """metav1.LabelSelector. An empty selector matches everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for req in self.match_expressions:
            if req.operator in ("In", "NotIn"):
                parts.append(f"{req.key} {req.operator.lower()} ({','.join(req.values)})")
            elif req.operator == "Exists":
                parts.append(req.key)
            else:
                parts.append(f"!{req.key}")
        return ",".join(parts) or "<everything>"


M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field, with pydantic's noise removed."""
    lines = []
    for err in exc.errors():
        loc = _loc_to_path(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        where = f"{prefix}.{loc}" if loc else prefix
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def validate_spec(model: type[M], spec: Any, prefix: str = "spec") -> M:
    """Parse ``spec`` (the object's ``spec`` dict) into ``model`` or raise :class:`SpecError`."""
    if not isinstance(spec, dict):
        raise SpecError(f"{prefix} is missing or not an object")
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, prefix)) from None
