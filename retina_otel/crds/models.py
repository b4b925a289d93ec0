"""Typed models of the retina.sh/v1alpha1 specs, used by the operator and the kubectl plugin.

The OpenAPI schemas in :mod:`retina_otel.crds.schemas` hold the checks an API server can do on
admission; these models repeat them and add the ones a schema cannot express well (IP parsing, the
hostPath rules), so that an object created before the CRD was installed, or against a server that
skips validation, still gets a clear message instead of a half-made capture.

Field names are the CRD's camelCase names (aliases); Python attributes are snake_case.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from retina_otel.durations import DURATION_PATTERN, parse_duration

__all__ = [
    "DEFAULT_HOST_PATH_BASE",
    "DURATION_PATTERN",
    "CaptureConfiguration",
    "CaptureFilters",
    "CaptureOption",
    "CaptureSpec",
    "CaptureTarget",
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
    "TracesConfigurationSpec",
    "format_validation_error",
    "parse_duration",
    "parse_filter_entry",
    "resolve_host_path",
    "validate_spec",
]

#: Host directory under which a Capture's relative ``hostPath`` lands (Retina's default).
DEFAULT_HOST_PATH_BASE = "/var/log/retina/captures"

_HOST_PATH_CHARS = re.compile(r"^[A-Za-z0-9._/-]+$")
#: Kubernetes object names (DNS subdomain) and label values.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")

#: Metric context labels Retina accepts in a MetricsConfiguration.
CONTEXT_LABELS = ("ip", "namespace", "podname", "workload", "service", "port", "zone")
ADDITIONAL_LABELS = ("direction", "is_reply")
ADVANCED_METRICS = (
    "forward",
    "drop",
    "tcpflags",
    "tcpretrans",
    "dns",
    "node_apiserver",
    "adv_forward_count",
    "adv_forward_bytes",
    "adv_drop_count",
    "adv_drop_bytes",
    "adv_tcpflags_count",
    "adv_tcpretrans_count",
    "adv_dns_request_count",
    "adv_dns_response_count",
    "adv_node_apiserver_latency",
    "adv_node_apiserver_tcp_handshake_latency",
    "adv_node_apiserver_no_response",
)


class SpecError(ValueError):
    """A spec that cannot be used; ``str()`` says what to fix."""


class _Model(BaseModel):
    # strict: a value of another JSON type is an error, as in the CRD's schema ("yes" is not a boolean,
    # "5" not an integer); tests/test_crd_agreement.py keeps the two in step.
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, strict=True
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API expects it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def parse_filter_entry(entry: str) -> tuple[str | None, int | None]:
    """Split an include/exclude entry into (ip or None, port or None).

    Accepted: ``IP``, ``IP:port``, ``*:port``, ``IP:*``, ``port`` (Retina's CLI form), and for IPv6
    ``[IP]:port`` / ``[IP]:*``. A ``*`` means "any".
    """
    text = entry.strip()
    if not text:
        raise ValueError("empty filter entry")
    ip_part: str
    port_part: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"filter {entry!r}: missing ']'")
        ip_part, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"filter {entry!r}: expected ':port' after ']'")
        port_part = rest[1:] if rest else None
    elif text.count(":") == 1:
        ip_part, port_part = text.split(":")
    elif text.isdigit():
        ip_part, port_part = "*", text
    else:
        ip_part, port_part = text, None
    ip: str | None = None
    if ip_part not in ("*", ""):
        try:
            ip = str(_parse_ip(ip_part))
        except ValueError:
            raise ValueError(f"filter {entry!r}: {ip_part!r} is not an IP address") from None
    port: int | None = None
    if port_part not in (None, "*", ""):
        assert port_part is not None
        if not port_part.isdigit() or not 0 < int(port_part) < 65536:
            raise ValueError(f"filter {entry!r}: port {port_part!r} is not 1-65535")
        port = int(port_part)
    if ip is None and port is None:
        raise ValueError(f"filter {entry!r} matches everything; give an IP, a port or both")
    return ip, port


def resolve_host_path(raw: str, base_dir: str = DEFAULT_HOST_PATH_BASE) -> str:
    """The node directory for a Capture's relative ``hostPath``; raises :class:`SpecError`.

    Same rules as Retina: a relative subpath of safe characters, no ``..`` segment, joined under an
    absolute base directory and still inside it after normalisation.
    """
    if not raw:
        raise SpecError("outputConfiguration.hostPath is empty; give a relative directory name such as 'captures'")
    if not posixpath.isabs(base_dir):
        raise SpecError(f"the operator's hostPath base directory {base_dir!r} must be absolute")
    if raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", raw):
        raise SpecError(
            f"outputConfiguration.hostPath {raw!r} is absolute; give a path relative to {base_dir} "
            f"(for example {raw.strip('/').split('/')[-1] or 'captures'!r})"
        )
    if not _HOST_PATH_CHARS.match(raw):
        raise SpecError(
            f"outputConfiguration.hostPath {raw!r} has characters other than letters, digits, '.', '_', '-', '/'"
        )
    if ".." in re.split(r"[/\\]", raw):
        raise SpecError(f"outputConfiguration.hostPath {raw!r} contains '..'; remove the parent-directory segments")
    sub = posixpath.normpath(raw)
    if sub in (".", ""):
        raise SpecError("outputConfiguration.hostPath names no directory; give a relative name such as 'captures'")
    joined = posixpath.normpath(posixpath.join(base_dir, sub))
    if joined != base_dir and not joined.startswith(base_dir.rstrip("/") + "/"):
        raise SpecError(f"outputConfiguration.hostPath {raw!r} resolves outside {base_dir}")
    return joined


# ---------------------------------------------------------------------------------------------------
# Label selectors
# ---------------------------------------------------------------------------------------------------


class LabelSelectorRequirement(_Model):
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


class LabelSelector(_Model):
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


# ---------------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------------


class CaptureTarget(_Model):
    node_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    #: Pods by name: ``name`` (in the Capture's namespace) or ``namespace/name``.
    pod_names: list[str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CaptureTarget:
        given = [
            name
            for name, value in (
                ("nodeSelector", self.node_selector),
                ("podSelector", self.pod_selector),
                ("podNames", self.pod_names),
            )
            if value is not None
        ]
        if len(given) != 1:
            which = " and ".join(given) if given else "none"
            raise ValueError(
                "captureTarget needs exactly one of nodeSelector, podSelector (with an optional "
                f"namespaceSelector) or podNames; got {which}"
            )
        if self.namespace_selector is not None and self.pod_selector is None:
            raise ValueError("captureTarget.namespaceSelector is only valid together with podSelector")
        if self.pod_names is not None:
            if not self.pod_names:
                raise ValueError("captureTarget.podNames is empty; list at least one pod")
            for item in self.pod_names:
                parts = item.split("/")
                if len(parts) > 2 or not all(_NAME.match(p) for p in parts):
                    raise ValueError(f"captureTarget.podNames entry {item!r} is not 'name' or 'namespace/name'")
        return self


class CaptureFilters(_Model):
    include: list[str] = Field(default_factory=list, max_length=256)
    exclude: list[str] = Field(default_factory=list, max_length=256)

    @field_validator("include", "exclude")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_filter_entry(entry)
        return [e.strip() for e in value]


class TcpdumpDisplayOptions(_Model):
    """This project's earlier names for four of Retina's switches (``captureOption.tcpdump``), kept as
    aliases: noNameResolution = noResolvePort, verbose = verbosity: verbose, linkLevelHeader =
    printLinkHeader, absoluteSequenceNumbers = absoluteSeq, quiet = quietOutput."""

    no_name_resolution: bool | None = None  # -nn
    verbose: bool | None = None  # -v
    link_level_header: bool | None = None  # -e
    absolute_sequence_numbers: bool | None = None  # -S
    quiet: bool | None = None  # -q


#: Retina's tcpdump switches in ``captureOption`` (attribute names; see capturejob.TcpdumpFlags).
_RETINA_TCPDUMP_ATTRS = (
    "no_resolve_dns",
    "no_resolve_port",
    "print_link_header",
    "quiet_output",
    "absolute_seq",
    "dont_verify_checksum",
    "no_promiscuous",
    "packet_buffered",
    "immediate_mode",
    "verbosity",
    "timestamp_format",
    "print_data_format",
)


class CaptureOption(_Model):
    duration: str | None = None
    #: MB; Retina's default (100) when unset. Only an explicit null with no duration leaves no stop condition.
    max_capture_size: Annotated[int, Field(ge=1, le=100_000)] | None = 100
    packet_size: Annotated[int, Field(ge=1, le=262_144)] | None = None
    file_count: Annotated[int, Field(ge=1, le=1000)] | None = None
    interfaces: list[str] = Field(default_factory=list)
    pcap_filter: Annotated[str, Field(max_length=4096)] | None = None
    source_i_ps: list[str] = Field(default_factory=list, alias="sourceIPs")
    destination_i_ps: list[str] = Field(default_factory=list, alias="destinationIPs")
    # Retina's tcpdump switches (None: not set).
    no_resolve_dns: bool | None = Field(default=None, alias="noResolveDNS")
    no_resolve_port: bool | None = None
    print_link_header: bool | None = None
    quiet_output: bool | None = None
    absolute_seq: bool | None = None
    dont_verify_checksum: bool | None = None
    no_promiscuous: bool | None = None
    packet_buffered: bool | None = None
    immediate_mode: bool | None = None
    verbosity: Literal["", "verbose", "extra", "max"] | None = None
    timestamp_format: Literal["", "none", "unformatted", "delta", "date", "delta-since-first"] | None = None
    print_data_format: Literal["", "hex", "hex-with-link", "ascii", "ascii-with-link"] | None = None
    #: Alias object with this project's earlier names; Retina's fields above win where both are set.
    tcpdump: TcpdumpDisplayOptions | None = None

    def tcpdump_flags(self) -> dict[str, Any]:
        """The effective switches as camelCase keys of :class:`retina_otel.crds.capturejob.TcpdumpFlags`."""
        from retina_otel.crds.capturejob import LEGACY_TCPDUMP_KEYS

        out: dict[str, Any] = {}
        if self.tcpdump is not None:
            legacy = self.tcpdump.model_dump(by_alias=True)
            for old, (new, on) in LEGACY_TCPDUMP_KEYS.items():
                if legacy.get(old):
                    out[new] = on
        mine = self.model_dump(by_alias=True, include=set(_RETINA_TCPDUMP_ATTRS))
        out.update({k: v for k, v in mine.items() if v is not None})
        return out

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError(f"duration {value!r} must be more than zero")
        return value

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _INTERFACE.match(name):
                raise ValueError(f"interface {name!r} is not a valid interface name")
        return value

    @field_validator("source_i_ps", "destination_i_ps")
    @classmethod
    def _ips(cls, value: list[str]) -> list[str]:
        out = []
        for text in value:
            try:
                out.append(str(ipaddress.ip_network(text, strict=False)) if "/" in text else str(_parse_ip(text)))
            except ValueError:
                raise ValueError(f"{text!r} is not an IP address or CIDR") from None
        return out

    @property
    def duration_seconds(self) -> float | None:
        return parse_duration(self.duration) if self.duration else None


class CaptureConfiguration(_Model):
    capture_target: CaptureTarget
    filters: CaptureFilters | None = None
    #: Retina's name for the raw filter; merged with ``captureOption.pcapFilter`` (both must hold).
    tcpdump_filter: str | None = None
    include_metadata: bool = True
    capture_option: CaptureOption = Field(default_factory=CaptureOption)
    #: Upper bound on Jobs for this Capture (0: no limit); the operator's own limit also applies.
    job_num_limit: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _stop_condition(self) -> CaptureConfiguration:
        opt = self.capture_option
        if opt.duration is None and opt.max_capture_size is None:
            raise ValueError(
                "captureOption needs duration or maxCaptureSize (or both) so the capture stops; "
                "set for example duration: 1m"
            )
        return self


class S3Upload(_Model):
    endpoint: str | None = None
    bucket: str = Field(min_length=3, max_length=63)
    secret_name: str = Field(min_length=1)
    region: str | None = None
    path: str | None = Field(default=None, max_length=1024)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"s3Upload.endpoint {value!r} must be an http(s):// URL")
        return value or None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value and ".." in value.split("/"):
            raise ValueError("s3Upload.path must not contain '..'")
        return value


class OutputConfiguration(_Model):
    host_path: str | None = Field(default=None, max_length=255)
    persistent_volume_claim: str | None = Field(default=None, max_length=253)
    #: Name of a Secret whose ``blob-upload-url`` key holds a container SAS URL.
    blob_upload: str | None = Field(default=None, max_length=253)
    s3_upload: S3Upload | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> OutputConfiguration:
        if not (self.host_path or self.persistent_volume_claim or self.blob_upload or self.s3_upload):
            raise ValueError(
                "outputConfiguration needs at least one of hostPath, persistentVolumeClaim, blobUpload, s3Upload"
            )
        if self.host_path is not None:
            try:
                resolve_host_path(self.host_path)
            except SpecError as exc:
                raise ValueError(str(exc)) from None
        for name, value in (("persistentVolumeClaim", self.persistent_volume_claim), ("blobUpload", self.blob_upload)):
            if value is not None and not _NAME.match(value):
                raise ValueError(f"outputConfiguration.{name} {value!r} is not a valid object name")
        return self


class CaptureSpec(_Model):
    capture_configuration: CaptureConfiguration
    output_configuration: OutputConfiguration
    #: Retina's: once every Job succeeded, delete the Capture, its Jobs and generated Secrets (remote
    #: outputs only, so nothing is lost with them).
    clean_up_after_upload: bool = False

    @model_validator(mode="after")
    def _cleanup_needs_remote_output(self) -> CaptureSpec:
        out = self.output_configuration
        if self.clean_up_after_upload and not (out.blob_upload or out.s3_upload or out.persistent_volume_claim):
            raise ValueError(
                "cleanUpAfterUpload needs a remote output (blobUpload, s3Upload or persistentVolumeClaim); "
                "remove it or add one"
            )
        return self


# ---------------------------------------------------------------------------------------------------
# MetricsConfiguration, TracesConfiguration, RetinaEndpoint
# ---------------------------------------------------------------------------------------------------


class MetricsContextOptions(_Model):
    metric_name: str = Field(min_length=1)
    source_labels: list[str] = Field(default_factory=list)
    destination_labels: list[str] = Field(default_factory=list)
    additional_labels: list[str] = Field(default_factory=list)
    ttl: str | None = None

    @field_validator("metric_name")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in ADVANCED_METRICS:
            raise ValueError(f"metricName {value!r} is not one of {', '.join(ADVANCED_METRICS)}")
        return value

    @field_validator("source_labels", "destination_labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if label.lower() not in CONTEXT_LABELS:
                raise ValueError(f"context label {label!r} is not one of {', '.join(CONTEXT_LABELS)}")
        return value

    @field_validator("additional_labels")
    @classmethod
    def _additional(cls, value: list[str]) -> list[str]:
        for label in value:
            if label.lower() not in ADDITIONAL_LABELS:
                raise ValueError(f"additional label {label!r} is not one of {', '.join(ADDITIONAL_LABELS)}")
        return value

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | None) -> str | None:
        if value:
            parse_duration(value)
        return value or None


class MetricsNamespaces(_Model):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exactly_one(self) -> MetricsNamespaces:
        if bool(self.include) == bool(self.exclude):
            raise ValueError("namespaces needs exactly one of include or exclude (a non-empty list)")
        return self


class MetricsConfigurationSpec(_Model):
    context_options: list[MetricsContextOptions] = Field(min_length=1)
    namespaces: MetricsNamespaces


class TracePorts(_Model):
    port: str
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    end_port: str | None = None


class IPBlock(_Model):
    cidr: str | None = None
    except_: list[str] = Field(default_factory=list, alias="except")

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        return None if value is None else _ip_network(value, "cidr")

    @field_validator("except_")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_ip_network(cidr, "except") for cidr in value]


def _ip_network(value: str, what: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IP network (e.g. 10.0.0.0/16)") from None
    return value


class TraceTarget(_Model):
    ip_block: IPBlock | None = None
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None
    node_selector: LabelSelector | None = None
    service_selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _targets_something(self) -> TraceTarget:
        if (self.ip_block is None or not self.ip_block.cidr) and all(
            s is None for s in (self.namespace_selector, self.pod_selector, self.node_selector, self.service_selector)
        ):
            raise ValueError("targets nothing: give ipBlock.cidr or a selector (or leave the peer out to match any)")
        return self


class TraceTargets(_Model):
    from_: TraceTarget | None = Field(default=None, alias="from")
    to: TraceTarget | None = None
    ports: list[TracePorts] = Field(default_factory=list)
    trace_points: list[Literal["PodToNode", "NodeToPod", "NodeToNetwork", "NetworkToNode"]] = Field(
        default_factory=list
    )


class TraceConfiguration(_Model):
    capture_level: Literal["AllPackets", "FirstPacket"]
    include_layer7_data: bool = False
    trace_targets: list[TraceTargets] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_target(self) -> TraceConfiguration:
        if not self.trace_targets:
            raise ValueError("traceTargets is empty: this entry traces nothing (use [{}] for every connection)")
        return self


class TraceOutputConfiguration(_Model):
    destination: Literal["stdout", "azuretable", "loganalytics", "opentelemetry"]
    connection_configuration: str | None = None


class TracesConfigurationSpec(_Model):
    trace_configuration: list[TraceConfiguration] = Field(min_length=1)
    output_configuration: TraceOutputConfiguration


class EndpointContainer(_Model):
    name: str
    id: str | None = None


class EndpointOwnerReference(_Model):
    api_version: str | None = None
    kind: str | None = None
    name: str | None = None


class RetinaEndpointSpec(_Model):
    containers: list[EndpointContainer] = Field(default_factory=list)
    owner_references: list[EndpointOwnerReference] = Field(default_factory=list)
    node_ip: str | None = Field(default=None, alias="nodeIP")
    pod_ip: str | None = Field(default=None, alias="podIP")
    pod_i_ps: list[str] = Field(default_factory=list, alias="podIPs")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


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
