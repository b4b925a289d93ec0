"""The retina-otel operator (kopf): Capture -> Jobs, MetricsConfiguration acceptance, RetinaEndpoints.

CLI wiring: ``add_operator_arguments(parser)`` then ``main_operator(args)``; programmatic use:
``run_operator(namespace=..., install_crds=..., api_url=...)``.
"""

from __future__ import annotations

from retina_otel.controller import cli
from retina_otel.controller.run import add_operator_arguments, main_operator, run_operator

__all__ = ["add_operator_arguments", "cli", "main_operator", "run_operator"]
