"""The agent's configuration file, in the OpenTelemetry Collector's form.

```yaml
receivers:  {<type>[/<name>]: {...}}
processors: {<type>[/<name>]: {...}}
exporters:  {<type>[/<name>]: {...}}
connectors: {<type>[/<name>]: {...}}   # exporter of one pipeline, receiver of another
service:
  telemetry: {health: {endpoint: 0.0.0.0:18081}, logs: {level: info}}
  pipelines:
    metrics: {receivers: [...], processors: [...], exporters: [...]}
    logs:    {receivers: [...], processors: [...], exporters: [...]}
```

Everything is checked before anything starts: unknown component types, unknown keys, wrong types,
pipeline references to undefined components, components in a pipeline of a signal they do not handle,
connectors and extensions (:mod:`retina_otel.pipelinecheck`). Every problem is reported at once, each with the full
path of the field (``receivers.packetparser.aggregation``) and what would be valid.
``${env:NAME}`` and ``${env:NAME:-default}`` in string values are replaced from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retina_otel.component import ComponentConfig, ComponentKind, Factory
from retina_otel.endpoints import OptionalEndpoint
from retina_otel.pipelinecheck import check_pipelines
from retina_otel.registry import available_types, get_factory

__all__ = [
    "AgentConfig",
    "ConfigError",
    "ConfigProblem",
    "PipelineConfig",
    "ServiceConfig",
    "TelemetryConfig",
    "default_config_text",
    "load_config",
    "parse_config",
]

_SECTIONS: dict[str, ComponentKind] = {
    "receivers": "receiver",
    "processors": "processor",
    "exporters": "exporter",
    "connectors": "connector",
}
_ENV_PATTERN = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """One or more problems in a configuration; ``str()`` lists them one per line."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HealthConfig(_Strict):
    endpoint: OptionalEndpoint = Field("0.0.0.0:18081", description="host:port of /healthz and /readyz; empty disables")
    require_all_components: bool = Field(
        False, description="when true, /readyz fails while any component has failed to start"
    )


class LogsConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="the agent's log level")
    format: Literal["text", "json"] = Field("text", description="log line format on stderr")


class TelemetryConfig(_Strict):
    health: HealthConfig = Field(HealthConfig(), description="the health endpoint")
    logs: LogsConfig = Field(LogsConfig(), description="the agent's own log")
    node_name: str = Field(
        "", description="this node's name; default: $NODE_NAME, else the host name (used as resource attribute)"
    )
    expiry_interval: float = Field(10.0, gt=0, description="seconds between metric TTL sweeps")


class PipelineConfig(_Strict):
    receivers: list[str] = Field(min_length=1, description="receiver ids feeding this pipeline")
    processors: list[str] = Field(default_factory=list, description="processor ids, applied in order")
    exporters: list[str] = Field(min_length=1, description="exporter ids this pipeline feeds")


class ServiceConfig(_Strict):
    telemetry: TelemetryConfig = Field(TelemetryConfig(), description="the agent's own endpoints and logs")
    cluster_name: str = Field(
        "",
        description="this cluster's name; default: $CLUSTER_NAME. Becomes the `k8s.cluster.name` resource "
        "attribute of OTLP metrics and logs and, by the prometheus exporter's `cluster_label`, a label on every "
        "series (Retina's dashboards filter on `cluster`); empty: neither",
    )
    pipelines: dict[str, PipelineConfig] = Field(
        min_length=1,
        description="pipelines by name: `logs[/name]` carry flow records, `metrics[/name]` metrics; each has "
        "receivers (or connectors), processors, exporters (or connectors); see docs/pipelines.md",
    )


@dataclass(frozen=True)
class ComponentEntry:
    id: str
    kind: ComponentKind
    factory: Factory[Any]
    config: ComponentConfig


@dataclass(frozen=True)
class AgentConfig:
    """A validated configuration: components by id, and the service section."""

    receivers: dict[str, ComponentEntry] = field(default_factory=dict)
    processors: dict[str, ComponentEntry] = field(default_factory=dict)
    exporters: dict[str, ComponentEntry] = field(default_factory=dict)
    service: ServiceConfig = field(default_factory=lambda: ServiceConfig(pipelines={}))
    connectors: dict[str, ComponentEntry] = field(default_factory=dict)

    def section(self, kind: ComponentKind) -> dict[str, ComponentEntry]:
        return {
            "receiver": self.receivers,
            "processor": self.processors,
            "exporter": self.exporters,
            "connector": self.connectors,
        }[kind]


def _substitute_env(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _ENV_PATTERN.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [_substitute_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_env(v, env) for k, v in value.items()}
    return value


def _pydantic_problems(prefix: str, error: ValidationError) -> list[ConfigProblem]:
    problems = []
    for item in error.errors():
        path = ".".join([prefix, *(str(p) for p in item["loc"])]) if item["loc"] else prefix
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(ConfigProblem(path, message))
    return problems


def _valid_keys_hint(model: type[BaseModel]) -> str:
    return ", ".join(sorted(model.model_fields))


def parse_config(raw: Any, *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate a decoded YAML document; raise :class:`ConfigError` listing every problem."""
    problems: list[ConfigProblem] = []
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("", "the configuration must be a mapping with receivers, exporters, service")])
    raw = _substitute_env(raw, os.environ if env is None else env)
    allowed_top = {*_SECTIONS, "service", "extensions"}
    for key in raw:
        if key not in allowed_top:
            problems.append(ConfigProblem(str(key), f"unknown section; valid: {', '.join(sorted(allowed_top))}"))
        elif key == "extensions" and raw[key]:
            problems.append(ConfigProblem(str(key), "not supported by retina-otel; remove it"))

    sections: dict[ComponentKind, dict[str, ComponentEntry]] = {kind: {} for kind in _SECTIONS.values()}
    for section, kind in _SECTIONS.items():
        entries = raw.get(section) or {}
        if not isinstance(entries, dict):
            problems.append(ConfigProblem(section, "must be a mapping of component ids to their settings"))
            continue
        for comp_id, body in entries.items():
            path = f"{section}.{comp_id}"
            type_name = str(comp_id).split("/", 1)[0]
            try:
                factory = get_factory(kind, type_name)
            except (ImportError, TypeError) as exc:
                problems.append(ConfigProblem(path, f"component type {type_name!r} failed to load: {exc}"))
                continue
            if factory is None:
                valid = ", ".join(available_types(kind))
                problems.append(ConfigProblem(path, f"unknown {kind} type {type_name!r}; valid types: {valid}"))
                continue
            if body is None:
                body = {}
            if not isinstance(body, dict):
                problems.append(
                    ConfigProblem(
                        path, f"settings must be a mapping (valid keys: {_valid_keys_hint(factory.config_model)})"
                    )
                )
                continue
            try:
                config = factory.config_model.model_validate(body)
            except ValidationError as exc:
                found = _pydantic_problems(path, exc)
                problems.extend(
                    ConfigProblem(p.path, f"{p.message}; valid keys: {_valid_keys_hint(factory.config_model)}")
                    if p.message == "unknown key"
                    else p
                    for p in found
                )
                continue
            sections[kind][str(comp_id)] = ComponentEntry(str(comp_id), kind, factory, config)

    service: ServiceConfig | None = None
    raw_service = raw.get("service")
    if raw_service is None:
        problems.append(ConfigProblem("service", "missing; it needs at least one pipeline under service.pipelines"))
    else:
        try:
            service = ServiceConfig.model_validate(raw_service)
        except ValidationError as exc:
            problems.extend(_pydantic_problems("service", exc))

    if service is not None:
        by_section = {section: sections[kind] for section, kind in _SECTIONS.items()}
        problems.extend(check_pipelines(service.pipelines, by_section, raw))
    if problems:
        raise ConfigError(problems)
    assert service is not None
    return AgentConfig(
        sections["receiver"], sections["processor"], sections["exporter"], service, sections["connector"]
    )


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a config file; ``None`` loads the embedded default."""
    if path is None:
        text = default_config_text(env=env)
        source = "<embedded default>"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([ConfigProblem("", f"cannot read {path}: {exc.strerror}")]) from exc
        source = str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"{source} is not valid YAML: {exc}")]) from exc
    return parse_config(raw, env=env)


def default_config_text(*, env: Mapping[str, str] | None = None) -> str:
    """The embedded default pipeline; with OTEL_EXPORTER_OTLP_ENDPOINT set, an ``otlp`` exporter (which
    reads its endpoint and the other OTEL_EXPORTER_OTLP_* variables itself) feeds from every pipeline;
    with RETINA_OTEL_OBSERVER set (``on``, or the ``unix:///path`` of its socket) the logs pipelines also
    feed the ``observer`` exporter (``retina-otel observe``; off by default: it loads gRPC)."""
    environ = os.environ if env is None else env
    text = resources.files("retina_otel.defaults").joinpath("default.yaml").read_text()
    otlp = bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    observer = environ.get("RETINA_OTEL_OBSERVER", "").strip()
    if observer.lower() in ("", "0", "false", "no", "off"):
        observer = ""
    if not otlp and not observer:
        return text
    raw = yaml.safe_load(text)
    added = []
    if otlp:
        raw["exporters"]["otlp"] = {}
        for pipeline in raw["service"]["pipelines"].values():
            pipeline["exporters"] = [e for e in pipeline["exporters"] if e != "nop"] + ["otlp"]
        raw["exporters"].pop("nop", None)
        added.append("OTLP export (OTEL_EXPORTER_OTLP_ENDPOINT is set)")
    if observer:
        on = observer.lower() in ("1", "true", "yes", "on")
        raw["exporters"]["observer"] = {} if on else {"socket": observer}
        for name, pipeline in raw["service"]["pipelines"].items():
            if name.split("/", 1)[0] == "logs":
                pipeline["exporters"] = [*pipeline["exporters"], "observer"]
        added.append("the observer exporter (RETINA_OTEL_OBSERVER is set)")
    header = f"# The embedded default with {' and '.join(added)}.\n"
    return header + yaml.safe_dump(raw, sort_keys=False)
