"""Which TracesConfiguration objects the agent applies: every Accepted one, merged.

The operator validates each object (``status.state`` Accepted, or Errored with the reason); unlike
MetricsConfiguration, several may be Accepted at once and the agent traces the union of their
``traceConfiguration`` entries. Objects are followed by the MetricsConfiguration watcher with this
selection rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retina_otel.metricsconfig import ACCEPTED, MetricsConfigurationWatcher, SpecCallback

__all__ = ["PLURAL", "select_traces_configurations", "traces_configuration_watcher"]

PLURAL = "tracesconfigurations"


def select_traces_configurations(
    objects: Mapping[str, Mapping[str, Any]],
) -> tuple[str | None, Mapping[str, Any] | None]:
    """``("a,b", {"traceConfiguration": [...every entry of a, then b...]})`` over the Accepted objects by
    name, or ``(None, None)`` when none is Accepted."""
    names = sorted(
        name for name, obj in objects.items() if str(((obj.get("status") or {}).get("state")) or "") == ACCEPTED
    )
    if not names:
        return None, None
    entries: list[Any] = []
    for name in names:
        entries.extend((objects[name].get("spec") or {}).get("traceConfiguration") or [])
    return ",".join(names), {"traceConfiguration": entries}


def traces_configuration_watcher(on_change: SpecCallback, **settings: Any) -> MetricsConfigurationWatcher:
    """A watcher of TracesConfiguration objects (``settings``: api_url, kubeconfig, context, relist_seconds,
    watch_timeout_seconds)."""
    return MetricsConfigurationWatcher(
        on_change, plural=PLURAL, kind="TracesConfiguration", select=select_traces_configurations, **settings
    )
