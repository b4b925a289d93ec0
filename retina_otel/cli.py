"""``retina-otel``: the agent, config validation, the operator and the capture workload.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from retina_otel.config import ConfigError, default_config_text, load_config

__all__ = ["main"]

log = logging.getLogger("retina_otel")


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            logging.Formatter('{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _print_config_error(source: str, error: ConfigError) -> None:
    print(f"retina-otel: invalid configuration {source}:", file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    source = args.config or "<embedded default>"
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_config_error(source, exc)
        return 2
    print(f"{source} is valid")
    for name, p in config.service.pipelines.items():
        stages = [", ".join(p.receivers), *p.processors, ", ".join(p.exporters)]
        print(f"  {name}: {' -> '.join(stages)}")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from retina_otel.allocator import tune_for_daemon
    from retina_otel.health import HealthServer
    from retina_otel.service import Agent

    if args.print_default_config:
        print(default_config_text(), end="")
        return 0
    source = args.config or "<embedded default>"
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_config_error(source, exc)
        return 2
    telemetry = config.service.telemetry
    _setup_logging(args.log_level or telemetry.logs.level, telemetry.logs.format)
    if not tune_for_daemon():
        log.debug("malloc not tuned (not glibc)")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = Agent(config)
    except Exception as exc:  # a factory rejected its config at creation
        print(f"retina-otel: cannot build pipelines from {source}: {exc}", file=sys.stderr)
        return 2
    health: HealthServer | None = None
    try:
        if telemetry.health.endpoint:
            health = HealthServer(telemetry.health.endpoint, agent.readiness)
            health.start()
        log.info("starting agent on node %s with %s", agent.node_name, source)
        agent.start()
        ready, detail = agent.readiness()
        log.info("agent started; ready=%s %s", ready, detail.get("failed", ""))
        while not stop.wait(1.0):
            pass
    finally:
        agent.shutdown()
        if health is not None:
            health.shutdown()
        log.info("agent stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _LazyParser(prog="retina-otel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run the agent (default: embedded pipeline for this host)")
    agent.add_argument("--config", help="collector-style YAML config; default: the embedded one")
    agent.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides the config")
    agent.add_argument("--print-default-config", action="store_true", help="print the embedded config and exit")
    agent.set_defaults(func=cmd_agent)

    validate = sub.add_parser("validate", help="check a config file; exit 2 when it is bad")
    validate.add_argument("--config", help="the file to check; default: the embedded config")
    validate.set_defaults(func=cmd_validate)

    reference = sub.add_parser("config-reference", help="print every component's settings as Markdown")
    reference.set_defaults(func=_cmd_reference)

    sub.add_parser(
        "demo", help="run the agent here against generated traffic between sandbox pods", populate=_populate_demo
    )
    sub.add_parser(
        "observe", help="live flows from an agent's Observer API (like hubble observe)", populate=_populate_observe
    )

    _add_optional_commands(sub)
    return parser


def _cmd_reference(_args: argparse.Namespace) -> int:
    from retina_otel.configdoc import render_reference

    print(render_reference(), end="")
    return 0


def _populate_observe(parser: argparse.ArgumentParser) -> None:
    from retina_otel.observe.cli import add_arguments

    add_arguments(parser)


def _populate_demo(parser: argparse.ArgumentParser) -> None:
    from retina_otel.demo import add_arguments, main_from_args

    add_arguments(parser)
    parser.set_defaults(func=main_from_args)


class _LazyParser(argparse.ArgumentParser):
    """A sub-command parser whose arguments are added only when that sub-command is used.

    The operator and capture commands' modules import kopf, kubernetes and cloud SDKs; building their
    options at parser-construction time put those (~70 MB, ~1 s) into every ``retina-otel agent``.
    """

    def __init__(
        self, *args: Any, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _ensure_populated(self) -> None:
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._ensure_populated()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ensure_populated()
        return super().format_help()


def _populate_operator(parser: argparse.ArgumentParser) -> None:
    from retina_otel.extras import MissingExtraError, require_extra

    try:
        require_extra("operator", "retina-otel operator", "kopf")
    except MissingExtraError as exc:
        message = str(exc)
        parser.set_defaults(func=lambda _args: _fail(message))
        return
    from retina_otel.controller import cli as controller_cli

    controller_cli.add_arguments(parser)
    parser.set_defaults(func=controller_cli.main_from_args)


def _populate_capture_run(parser: argparse.ArgumentParser) -> None:
    from retina_otel.capture import cli as capture_cli

    capture_cli.add_arguments(parser)
    parser.set_defaults(func=capture_cli.main_from_args)


def _add_optional_commands(sub: argparse._SubParsersAction[_LazyParser]) -> None:
    """Subcommands whose packages pull in heavier dependencies, imported only when used.

    ``find_spec`` of a package imports its parent only, so the check itself imports neither package.
    """
    import importlib.util

    if importlib.util.find_spec("retina_otel.controller") is not None:
        sub.add_parser("operator", help="run the kopf operator for the retina.sh CRDs", populate=_populate_operator)
    if importlib.util.find_spec("retina_otel.crds") is not None:
        crds = sub.add_parser("crds", help="print the CRDs as YAML")
        crds.set_defaults(func=_cmd_crds)
    if importlib.util.find_spec("retina_otel.capture") is not None:
        capture = sub.add_parser("capture", help="packet capture workload")
        capture_sub = capture.add_subparsers(dest="capture_command", required=True)
        capture_sub.add_parser(
            "run", help="run one capture (what a Capture Job executes)", populate=_populate_capture_run
        )


def _fail(message: str) -> int:
    print(f"retina-otel: {message}", file=sys.stderr)
    return 2


def _cmd_crds(_args: argparse.Namespace) -> int:
    from retina_otel.crds import render_crds

    print(render_crds(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
