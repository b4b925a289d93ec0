"""What a capture Job hands the workload: the Capture's spec, already translated for one node.

The operator (and the kubectl plugin) serialise this model to JSON in the ``RETINA_CAPTURE_SPEC``
environment variable; ``NODE_NAME`` and ``CAPTURE_NAME`` come as separate variables. Field names are
accepted in snake_case and camelCase. Secrets are never in the spec itself, only the paths of files
(mounted Kubernetes secrets) that hold them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from retina_otel.crds.capturejob import TcpdumpFlags
from retina_otel.durations import parse_duration as go_duration

__all__ = [
    "CaptureJobSpec",
    "CaptureOutputs",
    "S3Output",
    "SpecError",
    "parse_duration",
    "validate_name",
]

SPEC_ENV = "RETINA_CAPTURE_SPEC"
NODE_ENV = "NODE_NAME"
CAPTURE_ENV = "CAPTURE_NAME"

_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}$")


class SpecError(ValueError):
    """The capture spec (or a value given on the command line) is invalid; the message says what to fix."""


def validate_name(kind: str, value: str) -> str:
    """Capture and node names become part of file and object names: DNS-like names only, no paths."""
    if not _NAME_RE.match(value) or ".." in value:
        raise SpecError(
            f"{kind} {value!r} is not a valid name (letters, digits, '.', '_', '-'; at most 253 characters)"
        )
    return value


def parse_duration(value: object) -> float | None:
    """Seconds from a number or a Go/Kubernetes duration string (``"90s"``, ``"1m30s"``, ``"2h"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise SpecError(f"duration {value!r} is not a number or a duration such as '1m30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = go_duration(text)
            except ValueError:
                raise SpecError(
                    f"duration {value!r} is not a number of seconds or a duration such as '1m30s'"
                ) from None
    else:
        raise SpecError(f"duration {value!r} is not a number or a duration such as '1m30s'")
    if seconds <= 0:
        raise SpecError(f"duration {value!r} must be positive")
    return seconds


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class S3Output(_Model):
    """An S3 (or S3-compatible) bucket; the keys are read from files (a mounted secret)."""

    bucket: str = Field(min_length=3, max_length=63)
    endpoint: str | None = None
    region: str | None = None
    path: str = ""
    access_key_id_file: str
    secret_access_key_file: str
    session_token_file: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("s3 endpoint must be an http(s) URL without query, e.g. https://s3.example.com")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        parts = [p for p in value.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError("s3 path must not contain '.' or '..' segments")
        return "/".join(parts)


class CaptureOutputs(_Model):
    """Where the tarball goes. Paths are as seen inside the capture container."""

    host_path: str | None = None
    """Directory where the node's hostPath volume is mounted."""
    pvc_path: str | None = None
    """Directory where the PersistentVolumeClaim is mounted."""
    blob_sas_url_file: str | None = None
    """File holding an Azure Blob container SAS URL (a mounted secret)."""
    s3: S3Output | None = None

    @field_validator("host_path", "pvc_path")
    @classmethod
    def _absolute_dir(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or ".." in value.split("/")):
            raise ValueError("output directories must be absolute paths without '..' (the container's mount path)")
        return value

    def configured(self) -> list[str]:
        kinds = []
        if self.host_path:
            kinds.append("hostPath")
        if self.pvc_path:
            kinds.append("persistentVolumeClaim")
        if self.blob_sas_url_file:
            kinds.append("blobUpload")
        if self.s3:
            kinds.append("s3Upload")
        return kinds


class CaptureJobSpec(_Model):
    """One node's share of a Capture, as the Job passes it to ``retina-otel capture run``."""

    include_filters: tuple[str, ...] = ()
    exclude_filters: tuple[str, ...] = ()
    source_ips: tuple[str, ...] = Field(default=(), alias="sourceIPs")
    destination_ips: tuple[str, ...] = Field(default=(), alias="destinationIPs")
    pod_ips: tuple[str, ...] = Field(default=(), alias="podIPs")
    pcap_filter: str | None = None
    duration: Duration = None
    """Seconds (or a duration string); at least one of duration and max_capture_size_mb is set."""
    max_capture_size_mb: int | None = Field(default=100, ge=1, le=1024 * 1024, alias="maxCaptureSize")
    packet_size: int | None = Field(default=None, ge=1, le=262144)
    file_count: int | None = Field(default=None, ge=1, le=10000)
    interfaces: tuple[str, ...] = ()
    include_metadata: bool = True
    tcpdump: TcpdumpFlags = TcpdumpFlags()
    """Retina's tcpdump switches (``noResolvePort``, ``verbosity``, ...); each adds its tcpdump option."""
    outputs: CaptureOutputs = CaptureOutputs()
    capture_name: str | None = None
    """From the Job contract; ``$CAPTURE_NAME`` and ``--capture-name`` take precedence."""
    work_dir: str | None = None
    """From the Job contract (an emptyDir); ``--work-dir`` takes precedence."""

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _IFACE_RE.match(name):
                raise ValueError(f"interface name {name!r} is not a valid Linux interface name")
        if "any" in value and len(value) > 1:
            raise ValueError("interface 'any' cannot be combined with other interfaces")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _stop_condition(self) -> CaptureJobSpec:
        if self.duration is None and self.max_capture_size_mb is None:
            raise ValueError("set at least one of duration and maxCaptureSize, or the capture never stops")
        return self

    @classmethod
    def from_json(cls, text: str) -> CaptureJobSpec:
        import json

        from pydantic import ValidationError

        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"capture spec is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        try:
            if isinstance(data, dict) and _is_contract(data):
                return cls.from_contract(data)
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"invalid capture spec: {_format_validation(exc)}") from None

    @classmethod
    def from_contract(cls, data: dict[str, Any]) -> CaptureJobSpec:
        """Adapt the operator's Job contract (``retina_otel.crds.capturejob.CaptureJobSpec``)."""
        from retina_otel.crds.capturejob import CaptureJobSpec as Contract

        job = Contract.model_validate(data)
        out = job.outputs
        s3 = None
        if out.s3 is not None:
            s3 = S3Output(
                bucket=out.s3.bucket,
                endpoint=out.s3.endpoint,
                region=out.s3.region,
                path=out.s3.path or "",
                access_key_id_file=out.s3.access_key_id_file,
                secret_access_key_file=out.s3.secret_access_key_file,
            )
        return cls(
            include_filters=tuple(job.filter.include),
            exclude_filters=tuple(job.filter.exclude),
            source_ips=tuple(job.filter.source_ips),
            destination_ips=tuple(job.filter.destination_ips),
            pod_ips=tuple(job.filter.pod_ips),
            pcap_filter=job.filter.pcap_filter,
            duration=job.duration_seconds,
            # Retina's maxCaptureSize defaults to 100 MB; the contract leaves it unset then.
            max_capture_size_mb=job.max_capture_size_mb if job.max_capture_size_mb is not None else 100,
            packet_size=job.packet_size,
            file_count=job.file_count,
            interfaces=tuple(job.interfaces),
            include_metadata=job.include_metadata,
            tcpdump=job.tcpdump,
            outputs=CaptureOutputs(
                host_path=out.host_path,
                pvc_path=out.pvc_mount_path,
                blob_sas_url_file=out.blob.sas_url_file if out.blob else None,
                s3=s3,
            ),
            capture_name=job.capture_name,
            work_dir=job.work_dir,
        )


_CONTRACT_KEYS = {"captureName", "capture_name", "captureNamespace", "capture_namespace", "filter", "version"}


def _is_contract(data: dict[str, Any]) -> bool:
    """The operator's contract nests the filters and names the capture; this module's own form does not."""
    return bool(_CONTRACT_KEYS & set(data))


def _format_validation(exc: Any) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "spec"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)
