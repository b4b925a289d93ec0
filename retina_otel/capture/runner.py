"""One capture, start to finish: validate, tcpdump, metadata, tarball, outputs, result.

The tarball is ``<capture>-<node>-<YYYYMMDDhhmmss>UTC.tar.gz`` (UTC time the capture started) and
holds one top-level directory of the same name with the pcap file(s), ``tcpdump.log``,
``capture-info.json`` and, with includeMetadata, the metadata files. It stays in the work directory
whatever the outputs do; the staging directory is always removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .filters import build_filter, check_compiles
from .metadata import collect_metadata
from .netns import check_netns
from .outputs import OutputResult, deliver
from .redact import redact, redact_error
from .spec import CaptureJobSpec, validate_name
from .tcpdump import MB, TcpdumpRun, TcpdumpSettings, run_tcpdump

__all__ = ["CaptureResult", "RunOptions", "bundle_name", "run_capture"]

log = logging.getLogger("retina_otel.capture")


def bundle_name(capture: str, node: str, started: dt.datetime) -> str:
    """``<capture>-<node>-<YYYYMMDDhhmmss>UTC`` (no extension), the time converted to UTC."""
    if started.tzinfo is None:
        raise ValueError("the capture start time must be timezone-aware")
    stamp = started.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S")
    return f"{validate_name('capture name', capture)}-{validate_name('node name', node)}-{stamp}UTC"


@dataclass(frozen=True)
class RunOptions:
    capture_name: str
    node_name: str
    work_dir: Path
    netns: str | None = None
    extra_output_dirs: tuple[str, ...] = ()
    tcpdump: str = "tcpdump"
    poll_interval: float = 0.1
    max_bytes: int | None = None
    """Overrides the spec's maxCaptureSize (in bytes, for small captures by hand and in tests)."""
    started: dt.datetime | None = None


@dataclass
class CaptureResult:
    capture: str
    node: str
    file: str
    local_path: str | None
    ok: bool
    filter: str
    start_time: str
    end_time: str | None = None
    stop_reason: str | None = None
    capture_error: str | None = None
    bytes: int | None = None
    pcap_bytes: int | None = None
    packets_captured: int | None = None
    packets_dropped: int | None = None
    metadata_errors: list[str] = field(default_factory=list)
    outputs: list[OutputResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "capture": self.capture,
            "node": self.node,
            "file": self.file,
            "localPath": self.local_path,
            "ok": self.ok,
            "filter": self.filter,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "stopReason": self.stop_reason,
            "captureError": redact(self.capture_error) if self.capture_error else None,
            "bytes": self.bytes,
            "pcapBytes": self.pcap_bytes,
            "packetsCaptured": self.packets_captured,
            "packetsDropped": self.packets_dropped,
            "metadataErrors": [redact(e) for e in self.metadata_errors],
            "outputs": [o.to_dict() for o in self.outputs],
            "failedOutputs": [o.type for o in self.outputs if not o.ok],
        }
        return data

    def to_json(self) -> str:
        return redact(json.dumps(self.to_dict(), sort_keys=True))


def _iso(ts: float | dt.datetime | None) -> str | None:
    if ts is None:
        return None
    when = ts if isinstance(ts, dt.datetime) else dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def prepare(spec: CaptureJobSpec, opts: RunOptions) -> str:
    """Everything that can be checked before capturing; returns the filter. Raises SpecError/FilterError."""
    validate_name("capture name", opts.capture_name)
    validate_name("node name", opts.node_name)
    if opts.netns:
        check_netns(opts.netns)
    if not spec.outputs.configured() and not opts.extra_output_dirs:
        from .spec import SpecError

        raise SpecError("no output configured: set hostPath, persistentVolumeClaim, blobUpload or s3Upload")
    expression = build_filter(spec)
    check_compiles(expression, tcpdump=opts.tcpdump, netns=opts.netns)
    return expression


def run_capture(
    spec: CaptureJobSpec,
    opts: RunOptions,
    *,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    expression: str | None = None,
) -> CaptureResult:
    """Capture, bundle and deliver. Invalid input raises ``SpecError`` before anything starts;
    everything after that is reported in the result (``ok`` false), never raised."""
    if expression is None:
        expression = prepare(spec, opts)
    stop = stop or threading.Event()
    started = opts.started or dt.datetime.now(dt.UTC)
    name = bundle_name(opts.capture_name, opts.node_name, started)
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    tarball = opts.work_dir / f"{name}.tar.gz"
    result = CaptureResult(
        capture=opts.capture_name,
        node=opts.node_name,
        file=tarball.name,
        local_path=None,
        ok=False,
        filter=expression,
        start_time=_iso(started) or "",
    )
    max_bytes = opts.max_bytes
    if max_bytes is None and spec.max_capture_size_mb is not None:
        max_bytes = spec.max_capture_size_mb * MB
    settings = TcpdumpSettings(
        interfaces=spec.interfaces,
        expression=expression,
        duration=spec.duration,
        max_bytes=max_bytes,
        packet_size=spec.packet_size,
        file_count=spec.file_count,
        netns=opts.netns,
        options=tuple(spec.tcpdump.args()),
        tcpdump=opts.tcpdump,
        poll_interval=opts.poll_interval,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=opts.work_dir))
    try:
        bundle_dir = staging / name
        bundle_dir.mkdir()
        log.info(
            "capture %s on %s: filter %r, stop after %s s or %s bytes",
            name,
            opts.node_name,
            expression,
            spec.duration,
            max_bytes,
        )
        run = run_tcpdump(settings, bundle_dir, name, stop=stop, ready=ready)
        log.info("tcpdump stopped (%s): %s packets, %d bytes", run.stop_reason, run.packets_captured, run.bytes)
        result.stop_reason = run.stop_reason
        result.capture_error = run.error
        result.end_time = _iso(run.stopped_at)
        result.pcap_bytes = run.bytes
        result.packets_captured = run.packets_captured
        result.packets_dropped = run.packets_dropped
        if spec.include_metadata:
            try:
                records = collect_metadata(bundle_dir / "metadata", netns=opts.netns)
                result.metadata_errors = [f"{r.command}: {r.error}" for r in records if r.error]
            except Exception as exc:  # metadata never aborts a capture
                result.metadata_errors = [f"metadata collection failed: {redact_error(exc)}"]
        _write_info(bundle_dir / "capture-info.json", spec, opts, result, run, settings)
        _make_tarball(bundle_dir, tarball)
        result.local_path = str(tarball)
        result.bytes = tarball.stat().st_size
    except Exception as exc:
        result.capture_error = f"building the bundle failed: {redact_error(exc)}"
        log.error("%s", result.capture_error)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if result.local_path:
        result.outputs = deliver(tarball, spec.outputs, opts.extra_output_dirs)
        for out in result.outputs:
            if out.ok:
                log.info("copied to %s %s", out.type, out.location)
            else:
                log.error("output %s failed: %s (the tarball stays at %s)", out.type, out.error, tarball)
    result.ok = result.local_path is not None and result.capture_error is None and all(o.ok for o in result.outputs)
    return result


def _tool_version(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    return (proc.stdout + proc.stderr).strip().splitlines()[0] if (proc.stdout + proc.stderr).strip() else ""


def _write_info(
    path: Path,
    spec: CaptureJobSpec,
    opts: RunOptions,
    result: CaptureResult,
    run: TcpdumpRun,
    settings: TcpdumpSettings,
) -> None:
    info = {
        "capture": opts.capture_name,
        "node": opts.node_name,
        "hostname": platform.node(),
        "kernel": platform.release(),
        "netns": opts.netns,
        "startTime": result.start_time,
        "listeningTime": _iso(run.started_at),
        "endTime": result.end_time,
        "stopReason": run.stop_reason,
        "captureError": run.error,
        "filter": settings.expression,
        "tcpdumpCommands": run.commands,
        "tcpdumpReturnCodes": run.returncodes,
        "tcpdumpVersion": _tool_version([settings.tcpdump, "--version"]),
        "packetsCaptured": run.packets_captured,
        "packetsReceivedByFilter": run.packets_received,
        "packetsDroppedByKernel": run.packets_dropped,
        "pcapFiles": [p.name for p in run.pcap_files],
        "pcapBytes": run.bytes,
        "maxBytes": settings.max_bytes,
        "spec": spec.model_dump(mode="json", by_alias=True),
        "metadataErrors": result.metadata_errors,
        "pid": os.getpid(),
    }
    path.write_text(redact(json.dumps(info, indent=2, sort_keys=True)) + "\n")


def _make_tarball(bundle_dir: Path, tarball: Path) -> None:
    partial = tarball.with_name(f".{tarball.name}.partial")
    try:
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(bundle_dir, arcname=bundle_dir.name)
        os.replace(partial, tarball)
    finally:
        if partial.exists():
            partial.unlink()
