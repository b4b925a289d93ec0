"""The contract between the Job builder (operator and kubectl plugin) and the capture workload.

A capture Job's container runs ``retina-otel capture run`` with these environment variables:

``RETINA_CAPTURE_SPEC``
    JSON of :class:`CaptureJobSpec` (camelCase keys). It never holds a secret: credentials are
    files (Secret volumes) whose *paths* are in the spec.
``NODE_NAME``
    The node's name, from the downward API (``spec.nodeName``).
``CAPTURE_NAME``
    The Capture's name (also in the spec; here for logs and ``ps``).
``POD_NAME``, ``POD_NAMESPACE``
    From the downward API, for the workload's own logs.

Load it with :func:`CaptureJobSpec.from_env`. The workload builds the tcpdump filter from
``filter`` (``(include...) and not (exclude...)``, source/destination IPs, pod IPs, pcap filter),
stops on ``durationSeconds``, ``maxCaptureSizeMB`` or SIGTERM, and copies
``<captureName>-<nodeName>-<YYYYMMDDhhmmss>UTC.tar.gz`` to every configured output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "BLOB_SECRET_KEY",
    "ENV_CAPTURE_NAME",
    "ENV_NODE_NAME",
    "ENV_SPEC",
    "HOST_PATH_MOUNT",
    "LEGACY_TCPDUMP_KEYS",
    "PVC_MOUNT",
    "S3_ACCESS_KEY_ID_KEY",
    "S3_SECRET_ACCESS_KEY_KEY",
    "SECRETS_MOUNT",
    "WORK_DIR",
    "BlobOutput",
    "CaptureFilter",
    "CaptureJobSpec",
    "CaptureOutputs",
    "S3Output",
    "TcpdumpFlags",
]

ENV_SPEC = "RETINA_CAPTURE_SPEC"
ENV_NODE_NAME = "NODE_NAME"
ENV_CAPTURE_NAME = "CAPTURE_NAME"

#: Keys inside the Secrets the Capture names (Retina's key names).
BLOB_SECRET_KEY = "blob-upload-url"
S3_ACCESS_KEY_ID_KEY = "s3-access-key-id"
S3_SECRET_ACCESS_KEY_KEY = "s3-secret-access-key"

#: Where the Job mounts things inside the capture container.
WORK_DIR = "/retina/capture/work"  # emptyDir: tcpdump output, metadata, the tarball
HOST_PATH_MOUNT = "/retina/capture/hostpath"  # the node's <base>/<hostPath> directory
PVC_MOUNT = "/retina/capture/pvc"  # the PersistentVolumeClaim
SECRETS_MOUNT = "/retina/secrets"  # <SECRETS_MOUNT>/blob/<key>, <SECRETS_MOUNT>/s3/<key>


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class CaptureFilter(_Model):
    """What to capture. All lists may be empty; the workload validates the expression before use."""

    include: list[str] = Field(default_factory=list)  # "IP", "IP:port", "*:port", "IP:*", "[v6]:port"
    exclude: list[str] = Field(default_factory=list)
    source_ips: list[str] = Field(default_factory=list, alias="sourceIPs")
    destination_ips: list[str] = Field(default_factory=list, alias="destinationIPs")
    #: IPs of the targeted pods on this node (pod targets only); packets to or from any of them.
    pod_ips: list[str] = Field(default_factory=list, alias="podIPs")
    #: Raw pcap-filter expression(s) ANDed with the rest.
    pcap_filter: str | None = None


#: Retina's enum values and the tcpdump option each one stands for.
VERBOSITY_ARGS = {"": (), "verbose": ("-v",), "extra": ("-vv",), "max": ("-vvv",)}
TIMESTAMP_ARGS = {
    "": (),
    "none": ("-t",),
    "unformatted": ("-tt",),
    "delta": ("-ttt",),
    "date": ("-tttt",),
    "delta-since-first": ("-ttttt",),
}
PRINT_DATA_ARGS = {"": (), "hex": ("-x",), "hex-with-link": ("-xx",), "ascii": ("-A",), "ascii-with-link": ("-AA",)}

#: This project's earlier names (``captureOption.tcpdump``) -> Retina's, kept as aliases.
LEGACY_TCPDUMP_KEYS = {
    "noNameResolution": ("noResolvePort", True),
    "verbose": ("verbosity", "verbose"),
    "linkLevelHeader": ("printLinkHeader", True),
    "absoluteSequenceNumbers": ("absoluteSeq", True),
    "quiet": ("quietOutput", True),
}


class TcpdumpFlags(_Model):
    """Retina's tcpdump switches (``captureOption`` fields of the same names); each becomes a tcpdump
    option (see :meth:`args`). The display ones shape what tcpdump prints, not the pcap it writes."""

    no_resolve_dns: bool = Field(default=False, alias="noResolveDNS")  # -n
    no_resolve_port: bool = False  # -nn
    print_link_header: bool = False  # -e
    quiet_output: bool = False  # -q
    absolute_seq: bool = False  # -S
    dont_verify_checksum: bool = False  # -K
    no_promiscuous: bool = False  # -p
    packet_buffered: bool = False  # -U
    immediate_mode: bool = False  # --immediate-mode
    verbosity: Literal["", "verbose", "extra", "max"] = ""
    timestamp_format: Literal["", "none", "unformatted", "delta", "date", "delta-since-first"] = ""
    print_data_format: Literal["", "hex", "hex-with-link", "ascii", "ascii-with-link"] = ""

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """Jobs made by an earlier operator carry the old key names; a false old switch means unset."""
        if not isinstance(data, dict):
            return data
        out = {k: v for k, v in data.items() if k not in LEGACY_TCPDUMP_KEYS}
        for old, (new, on) in LEGACY_TCPDUMP_KEYS.items():
            if data.get(old) and new not in out:
                out[new] = on
        return out

    def args(self) -> list[str]:
        """tcpdump's options for these switches, in a fixed order (no shell, one option per item)."""
        out: list[str] = []
        if self.no_resolve_port:
            out.append("-nn")
        elif self.no_resolve_dns:
            out.append("-n")
        for on, flag in (
            (self.print_link_header, "-e"),
            (self.quiet_output, "-q"),
            (self.absolute_seq, "-S"),
            (self.dont_verify_checksum, "-K"),
            (self.no_promiscuous, "-p"),
            (self.packet_buffered, "-U"),
            (self.immediate_mode, "--immediate-mode"),
        ):
            if on:
                out.append(flag)
        out += VERBOSITY_ARGS[self.verbosity]
        out += TIMESTAMP_ARGS[self.timestamp_format]
        out += PRINT_DATA_ARGS[self.print_data_format]
        return out


class BlobOutput(_Model):
    #: File holding the container SAS URL (a mounted Secret key).
    sas_url_file: str


class S3Output(_Model):
    bucket: str
    endpoint: str | None = None
    region: str | None = None
    path: str | None = None
    access_key_id_file: str
    secret_access_key_file: str


class CaptureOutputs(_Model):
    #: Directory in the container where the node's hostPath directory is mounted.
    host_path: str | None = None
    #: The same directory as seen on the node (for messages only).
    host_path_on_node: str | None = None
    pvc_mount_path: str | None = None
    blob: BlobOutput | None = None
    s3: S3Output | None = None


class CaptureJobSpec(_Model):
    version: int = 1
    capture_name: str
    capture_namespace: str
    filter: CaptureFilter = Field(default_factory=CaptureFilter)
    duration_seconds: float | None = None
    max_capture_size_mb: int | None = Field(default=None, alias="maxCaptureSizeMB")
    packet_size: int | None = None
    file_count: int | None = None
    #: Empty: tcpdump's ``-i any``.
    interfaces: list[str] = Field(default_factory=list)
    include_metadata: bool = True
    tcpdump: TcpdumpFlags = Field(default_factory=TcpdumpFlags)
    work_dir: str = WORK_DIR
    outputs: CaptureOutputs = Field(default_factory=CaptureOutputs)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True, mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaptureJobSpec:
        return cls.model_validate_json(text)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CaptureJobSpec:
        env = os.environ if environ is None else environ
        text = env.get(ENV_SPEC)
        if not text:
            raise ValueError(f"{ENV_SPEC} is not set; this command runs inside a capture Job")
        return cls.from_json(text)
