"""Checks of the pipelines as a graph, once every component's own settings are valid.

* a pipeline's name starts with a known signal (``logs``, ``metrics``, ...: :mod:`retina_otel.signals`);
* every id it lists is defined (receivers may be receivers or connectors, exporters exporters or
  connectors; an id defined as both is ambiguous);
* every component handles the pipeline's signal (``Factory.signals``): k8sattributes in a metrics
  pipeline, or prometheus in a logs pipeline, is an error, not a silent no-op;
* a connector is an exporter of some pipeline and a receiver of another, and connects their signals
  (``Factory.connects``); connectors do not form a loop;
* no two components offer the same extension (``Factory.provides``);
* one writer per node-level metric family: flowmetrics' ``node_metrics`` derives the basic
  ``forward_*``/``drop_*``/``dns_*`` counters from flows (it adds), which the packetforward, dropreason
  and dns receivers publish themselves (dropreason sets cumulative kernel totals): with both in one
  agent the series would jump between the two writers' values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from retina_otel.signals import get_signal, signal_names, signal_of

if TYPE_CHECKING:
    from retina_otel.config import ComponentEntry, ConfigProblem, PipelineConfig

__all__ = ["check_pipelines"]


def _resolve(
    comp_id: str, primary: str, sections: Mapping[str, Mapping[str, ComponentEntry]], raw: Mapping[str, Any]
) -> tuple[str, ComponentEntry | None] | str:
    """(section, entry or None if the entry itself was invalid) or an error message."""
    candidates = [primary, "connectors"] if primary in ("receivers", "exporters") else [primary]
    found = [s for s in candidates if comp_id in (raw.get(s) or {})]
    if len(found) > 1:
        return f"{comp_id!r} is defined under both {found[0]} and {found[1]}; rename one"
    if not found:
        defined = sorted({k for s in candidates for k in (raw.get(s) or {})})
        where = " or ".join(candidates)
        return f"references {comp_id!r}, which is not defined under {where}; defined: {', '.join(defined) or 'none'}"
    return found[0], sections[found[0]].get(comp_id)


def check_pipelines(
    pipelines: Mapping[str, PipelineConfig],
    sections: Mapping[str, Mapping[str, ComponentEntry]],
    raw: Mapping[str, Any],
) -> list[ConfigProblem]:
    from retina_otel.config import ConfigProblem

    problems: list[ConfigProblem] = []
    as_exporter: dict[str, list[str]] = {}  # connector id -> pipelines it ends
    as_receiver: dict[str, list[str]] = {}  # connector id -> pipelines it feeds
    used: dict[str, ComponentEntry] = {}  # "<section>.<id>" -> entry
    for name, pipeline in pipelines.items():
        signal = signal_of(name)
        if get_signal(signal) is None:
            problems.append(
                ConfigProblem(
                    f"service.pipelines.{name}",
                    f"pipeline names start with a signal: {', '.join(repr(s) for s in signal_names())}",
                )
            )
            continue
        for section, ids in (
            ("receivers", pipeline.receivers),
            ("processors", pipeline.processors),
            ("exporters", pipeline.exporters),
        ):
            for i, comp_id in enumerate(ids):
                path = f"service.pipelines.{name}.{section}[{i}]"
                resolved = _resolve(comp_id, section, sections, raw)
                if isinstance(resolved, str):
                    problems.append(ConfigProblem(path, resolved))
                    continue
                where, entry = resolved
                if entry is None:
                    continue  # its own settings are reported already
                used[f"{where}.{comp_id}"] = entry
                if where == "connectors":
                    (as_exporter if section == "exporters" else as_receiver).setdefault(comp_id, []).append(name)
                    continue
                supported = entry.factory.supported_signals
                if signal not in supported:
                    problems.append(
                        ConfigProblem(
                            path,
                            f"{where}.{comp_id} ({entry.factory.type}) handles {' and '.join(supported)}, "
                            f"not {signal}; move it to a {' or '.join(supported)} pipeline",
                        )
                    )
    problems.extend(_check_connectors(pipelines, sections, as_exporter, as_receiver))
    problems.extend(_check_extensions(used))
    problems.extend(_check_node_metric_writers(used))
    return problems


NODE_METRIC_RECEIVERS = {
    "packetforward": "networkobservability_forward_count/_bytes",
    "dropreason": "networkobservability_drop_count/_bytes",
    "dns": "networkobservability_dns_request_count/_response_count",
}
"""Receivers that write the basic node-level families flowmetrics' ``node_metrics`` also writes."""


def _check_node_metric_writers(used: Mapping[str, ComponentEntry]) -> list[ConfigProblem]:
    from retina_otel.config import ConfigProblem

    receivers = {
        path: entry for path, entry in used.items() if path.startswith("receivers.")
        and entry.factory.type in NODE_METRIC_RECEIVERS
    }  # fmt: skip
    problems: list[ConfigProblem] = []
    for path, entry in used.items():
        if entry.factory.type != "flowmetrics" or not getattr(entry.config, "node_metrics", False):
            continue
        for receiver_path, receiver in receivers.items():
            problems.append(
                ConfigProblem(
                    f"{path}.node_metrics",
                    f"{receiver_path} ({receiver.factory.type}) writes "
                    f"{NODE_METRIC_RECEIVERS[receiver.factory.type]} itself; node_metrics: true would make a "
                    f"second writer of the same series: set node_metrics: false, or leave {receiver_path} out",
                )
            )
    return problems


def _check_connectors(
    pipelines: Mapping[str, PipelineConfig],
    sections: Mapping[str, Mapping[str, ComponentEntry]],
    as_exporter: Mapping[str, list[str]],
    as_receiver: Mapping[str, list[str]],
) -> list[ConfigProblem]:
    from retina_otel.config import ConfigProblem

    problems: list[ConfigProblem] = []
    for comp_id in sorted({*as_exporter, *as_receiver}):
        entry = sections["connectors"][comp_id]
        path = f"connectors.{comp_id}"
        ends, feeds = as_exporter.get(comp_id, []), as_receiver.get(comp_id, [])
        if not ends or not feeds:
            missing = "an exporter of" if not ends else "a receiver of"
            problems.append(ConfigProblem(path, f"a connector must be {missing} some pipeline too"))
            continue
        pairs = set(entry.factory.connects)
        for src in ends:
            for dst in feeds:
                if (signal_of(src), signal_of(dst)) not in pairs:
                    valid = ", ".join(f"{a} -> {b}" for a, b in entry.factory.connects)
                    problems.append(
                        ConfigProblem(
                            path,
                            f"connects {valid}; it cannot connect {src} ({signal_of(src)}) to {dst} ({signal_of(dst)})",
                        )
                    )
    # Loops: pipeline -> connector -> pipeline.
    edges: dict[str, list[str]] = {name: [] for name in pipelines}
    for comp_id, ends in as_exporter.items():
        for src in ends:
            edges[src].extend(as_receiver.get(comp_id, []))
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1 or (nxt not in state and visit(nxt)):
                return True
        state[node] = 2
        return False

    for name in pipelines:
        if name not in state and visit(name):
            problems.append(ConfigProblem(f"service.pipelines.{name}", "connectors form a loop through this pipeline"))
            break
    return problems


def _check_extensions(used: Mapping[str, ComponentEntry]) -> list[ConfigProblem]:
    from retina_otel.config import ConfigProblem

    problems: list[ConfigProblem] = []
    offered: dict[str, str] = {}
    for path, entry in used.items():
        for key in entry.factory.provides:
            first = offered.setdefault(key.name, path)
            if first != path:
                problems.append(
                    ConfigProblem(
                        path,
                        f"offers the {key.name!r} extension, which {first} offers already; "
                        "use one of them (it may be in several pipelines)",
                    )
                )
    return problems
