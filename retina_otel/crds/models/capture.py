"""The Capture spec: targets, filters, tcpdump options (Retina's names), outputs, and the hostPath and
filter-entry rules a schema cannot express."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from retina_otel.crds.models.common import (
    DEFAULT_HOST_PATH_BASE,
    NAME_RE,
    CrdModel,
    LabelSelector,
    SpecError,
    parse_ip,
)
from retina_otel.durations import parse_duration

_HOST_PATH_CHARS = re.compile(r"^[A-Za-z0-9._/-]+$")
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


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
            ip = str(parse_ip(ip_part))
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


class CaptureTarget(CrdModel):
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
                if len(parts) > 2 or not all(NAME_RE.match(p) for p in parts):
                    raise ValueError(f"captureTarget.podNames entry {item!r} is not 'name' or 'namespace/name'")
        return self


class CaptureFilters(CrdModel):
    include: list[str] = Field(default_factory=list, max_length=256)
    exclude: list[str] = Field(default_factory=list, max_length=256)

    @field_validator("include", "exclude")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_filter_entry(entry)
        return [e.strip() for e in value]


class TcpdumpDisplayOptions(CrdModel):
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


class CaptureOption(CrdModel):
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
                out.append(str(ipaddress.ip_network(text, strict=False)) if "/" in text else str(parse_ip(text)))
            except ValueError:
                raise ValueError(f"{text!r} is not an IP address or CIDR") from None
        return out

    @property
    def duration_seconds(self) -> float | None:
        return parse_duration(self.duration) if self.duration else None


class CaptureConfiguration(CrdModel):
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


class S3Upload(CrdModel):
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


class OutputConfiguration(CrdModel):
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
            if value is not None and not NAME_RE.match(value):
                raise ValueError(f"outputConfiguration.{name} {value!r} is not a valid object name")
        return self


class CaptureSpec(CrdModel):
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
