"""``retina-otel capture run``: what each capture Job executes, and a by-hand capture tool.

Input: the JSON spec in ``$RETINA_CAPTURE_SPEC`` (or ``--spec-file``), ``$CAPTURE_NAME`` and
``$NODE_NAME``; command-line options override single fields. Output: logs on stderr, one JSON
result line on stdout. Exit status: 0 captured and delivered everywhere, 1 the capture or an output
failed (the local tarball is kept and named in the result), 2 invalid input (nothing captured).
SIGTERM/SIGINT stop tcpdump gracefully; the bundle is still built and delivered.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .redact import RedactingFilter, redact, redact_error
from .spec import CAPTURE_ENV, NODE_ENV, SPEC_ENV, CaptureJobSpec, SpecError

__all__ = ["add_arguments", "main", "main_from_args", "run_from_args"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

log = logging.getLogger("retina_otel.capture")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``capture run`` (also usable on a sub-parser)."""
    src = parser.add_argument_group("input")
    src.add_argument("--spec-file", help=f"JSON capture spec (default: ${SPEC_ENV})")
    src.add_argument("--capture-name", help=f"capture name (default: ${CAPTURE_ENV}, else 'capture')")
    src.add_argument("--node-name", help=f"node name (default: ${NODE_ENV}, else the hostname)")
    opt = parser.add_argument_group("capture options (override the spec)")
    opt.add_argument("--duration", help="stop after this long: seconds or a duration such as 1m30s")
    opt.add_argument("--max-size", type=int, metavar="MB", help="stop when the pcap reaches this many MB")
    opt.add_argument("--max-bytes", type=int, help=argparse.SUPPRESS)  # small captures in tests
    opt.add_argument("--packet-size", type=int, help="bytes to keep of each packet (tcpdump -s)")
    opt.add_argument("--file-count", type=int, help="split the capture into this many files")
    opt.add_argument(
        "--interface", "-i", action="append", dest="interfaces", help="interface (repeatable; default any)"
    )
    opt.add_argument("--filter", dest="pcap_filter", help="raw pcap filter expression, ANDed with the rest")
    opt.add_argument("--include", action="append", help="include filter IP, IP:port, *:port, IP:* (repeatable)")
    opt.add_argument("--exclude", action="append", help="exclude filter, same forms (repeatable)")
    opt.add_argument("--source-ip", action="append", help="only packets from this IP (repeatable)")
    opt.add_argument("--destination-ip", action="append", help="only packets to this IP (repeatable)")
    opt.add_argument("--pod-ip", action="append", help="only packets of this pod IP (repeatable)")
    meta = opt.add_mutually_exclusive_group()
    meta.add_argument("--metadata", dest="include_metadata", action="store_true", default=None)
    meta.add_argument("--no-metadata", dest="include_metadata", action="store_false")
    out = parser.add_argument_group("where things go")
    out.add_argument("--output-dir", action="append", default=[], help="also copy the tarball here (repeatable)")
    out.add_argument("--work-dir", default=None, help="local directory for the tarball (default /tmp/retina-capture)")
    out.add_argument("--netns", help="capture inside this named network namespace (/run/netns/NAME)")
    out.add_argument("--tcpdump", default="tcpdump", help=argparse.SUPPRESS)
    out.add_argument("--validate-only", action="store_true", help="check the spec and filter, print the filter, exit")


def _load_spec(args: argparse.Namespace) -> CaptureJobSpec:
    if args.spec_file:
        try:
            text = Path(args.spec_file).read_text()
        except OSError as exc:
            raise SpecError(f"cannot read the spec file {args.spec_file}: {exc.strerror or exc}") from None
    else:
        text = os.environ.get(SPEC_ENV, "") or "{}"
    base = CaptureJobSpec.from_json(text)
    overrides: dict[str, Any] = {}
    if args.duration is not None:
        overrides["duration"] = args.duration
    for key in ("packet_size", "file_count", "pcap_filter", "include_metadata"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.max_size is not None:
        overrides["max_capture_size_mb"] = args.max_size
    for key, attr in (
        ("interfaces", "interfaces"),
        ("include_filters", "include"),
        ("exclude_filters", "exclude"),
        ("source_ips", "source_ip"),
        ("destination_ips", "destination_ip"),
        ("pod_ips", "pod_ip"),
    ):
        if getattr(args, attr):
            overrides[key] = list(getattr(args, attr))
    if not overrides:
        return base
    merged = base.model_dump(by_alias=False, exclude_unset=True)
    merged.update(overrides)
    return CaptureJobSpec.from_json(json.dumps(merged))


def _setup_logging() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    for name in ("azure", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retina-otel capture run", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed arguments (for a caller that built its own parser with :func:`add_arguments`)."""
    from .runner import RunOptions, prepare, run_capture

    handler = _setup_logging()
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("got signal %d: stopping tcpdump, then bundling and uploading", signum)
        stop.set()

    try:
        try:
            spec = _load_spec(args)
            capture = args.capture_name or os.environ.get(CAPTURE_ENV) or spec.capture_name or "capture"
            node = args.node_name or os.environ.get(NODE_ENV) or socket.gethostname()
            opts = RunOptions(
                capture_name=capture,
                node_name=node,
                work_dir=Path(args.work_dir or spec.work_dir or "/tmp/retina-capture"),
                netns=args.netns,
                extra_output_dirs=tuple(args.output_dir),
                tcpdump=args.tcpdump,
                max_bytes=args.max_bytes,
            )
            expression = prepare(spec, opts)
        except (SpecError, ValueError) as exc:
            message = redact(str(exc))
            log.error("invalid capture: %s", message)
            print(json.dumps({"ok": False, "error": message}), flush=True)
            return EXIT_INVALID
        except Exception as exc:
            message = redact_error(exc)
            log.error("cannot start the capture: %s", message)
            print(json.dumps({"ok": False, "error": message}), flush=True)
            return EXIT_INVALID
        if args.validate_only:
            print(json.dumps({"ok": True, "filter": expression}), flush=True)
            return EXIT_OK
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        ready, done = threading.Event(), threading.Event()
        watcher = threading.Thread(target=_announce_ready, args=(ready, done), daemon=True)
        watcher.start()
        try:
            result = run_capture(spec, opts, stop=stop, ready=ready, expression=expression)
        finally:
            done.set()
        print(result.to_json(), flush=True)
        if result.ok:
            log.info("capture %s done: %s", result.file, ", ".join(o.type for o in result.outputs))
            return EXIT_OK
        failed = [o.type for o in result.outputs if not o.ok]
        log.error(
            "capture %s finished with errors%s%s; the tarball stays at %s",
            result.file,
            f": capture failed ({result.capture_error})" if result.capture_error else "",
            f"; outputs failed: {', '.join(failed)}" if failed else "",
            result.local_path,
        )
        return EXIT_FAILED
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        log.removeHandler(handler)


main_from_args = run_from_args  # the name retina_otel.cli wires to ``capture run``


def _announce_ready(ready: threading.Event, done: threading.Event) -> None:
    """Log once tcpdump listens (operators and tests wait for this line on stderr)."""
    while not ready.wait(0.05):
        if done.is_set():
            return
    log.info("capture started: tcpdump is listening")


if __name__ == "__main__":
    sys.exit(main())
