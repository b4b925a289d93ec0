"""The ``observer`` exporter: recent flow records served over Hubble's Observer API.

See :mod:`retina_otel.exporters.observer.exporter` and docs/observe.md.
"""

from retina_otel.component import Factory
from retina_otel.exporters.observer.config import ObserverConfig
from retina_otel.exporters.observer.exporter import ObserverExporter, create

__all__ = ["FACTORY", "ObserverConfig", "ObserverExporter"]

FACTORY: Factory[ObserverConfig] = Factory(
    "observer",
    "exporter",
    ObserverConfig,
    create,
    "recent flow records over Hubble's Observer API (retina-otel observe, hubble observe)",
    signals=("logs",),  # flow records only; it reads batches and never changes them
    mutates_data=False,
    events_on_demand=lambda config: config.event_records == "while_following",
)
