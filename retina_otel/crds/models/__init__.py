"""Typed models of the retina.sh/v1alpha1 specs, used by the operator and the kubectl plugin.

:mod:`.common` (base model, label selectors, validation errors), :mod:`.capture` (Capture) and
:mod:`.configs` (MetricsConfiguration, TracesConfiguration, RetinaEndpoint); every name is importable
from here.

The OpenAPI schemas in :mod:`retina_otel.crds.schemas` hold the checks an API server can do on
admission; these models repeat them and add the ones a schema cannot express well (IP parsing, the
hostPath rules), so that an object created before the CRD was installed, or against a server that
skips validation, still gets a clear message instead of a half-made capture.

Field names are the CRD's camelCase names (aliases); Python attributes are snake_case.
"""

from __future__ import annotations

from retina_otel.crds.models.capture import (
    CaptureConfiguration,
    CaptureFilters,
    CaptureOption,
    CaptureSpec,
    CaptureTarget,
    OutputConfiguration,
    S3Upload,
    TcpdumpDisplayOptions,
    parse_filter_entry,
    resolve_host_path,
)
from retina_otel.crds.models.common import (
    DEFAULT_HOST_PATH_BASE,
    NAME_PATTERN,
    NAME_RE,
    CrdModel,
    LabelSelector,
    LabelSelectorRequirement,
    SpecError,
    format_validation_error,
    parse_ip,
    validate_spec,
)
from retina_otel.crds.models.configs import (
    ADDITIONAL_LABELS,
    ADVANCED_METRICS,
    CONTEXT_LABELS,
    EndpointContainer,
    EndpointOwnerReference,
    IPBlock,
    MetricsConfigurationSpec,
    MetricsContextOptions,
    MetricsNamespaces,
    RetinaEndpointSpec,
    TraceConfiguration,
    TraceOutputConfiguration,
    TracePorts,
    TracesConfigurationSpec,
    TraceTarget,
    TraceTargets,
)
from retina_otel.durations import DURATION_PATTERN, parse_duration

__all__ = [
    "ADDITIONAL_LABELS",
    "ADVANCED_METRICS",
    "CONTEXT_LABELS",
    "DEFAULT_HOST_PATH_BASE",
    "DURATION_PATTERN",
    "NAME_PATTERN",
    "NAME_RE",
    "CaptureConfiguration",
    "CaptureFilters",
    "CaptureOption",
    "CaptureSpec",
    "CaptureTarget",
    "CrdModel",
    "EndpointContainer",
    "EndpointOwnerReference",
    "IPBlock",
    "LabelSelector",
    "LabelSelectorRequirement",
    "MetricsConfigurationSpec",
    "MetricsContextOptions",
    "MetricsNamespaces",
    "OutputConfiguration",
    "RetinaEndpointSpec",
    "S3Upload",
    "SpecError",
    "TcpdumpDisplayOptions",
    "TraceConfiguration",
    "TraceOutputConfiguration",
    "TracePorts",
    "TraceTarget",
    "TraceTargets",
    "TracesConfigurationSpec",
    "format_validation_error",
    "parse_duration",
    "parse_filter_entry",
    "parse_ip",
    "resolve_host_path",
    "validate_spec",
]
