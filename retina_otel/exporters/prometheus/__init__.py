"""The ``prometheus`` exporter: ``/metrics`` with Retina's exact metric names.

See :mod:`retina_otel.exporters.prometheus.exporter`.
"""

from retina_otel.exporters.prometheus.exporter import (
    FACTORY,
    PrometheusConfig,
    PrometheusExporter,
    render,
    with_cluster_label,
)

__all__ = ["FACTORY", "PrometheusConfig", "PrometheusExporter", "render", "with_cluster_label"]
