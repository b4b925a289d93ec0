"""``retina-otel operator`` wiring in the names ``retina_otel/cli.py`` looks for."""

from __future__ import annotations

from retina_otel.controller.run import add_operator_arguments as add_arguments
from retina_otel.controller.run import main_operator as main_from_args

__all__ = ["add_arguments", "main_from_args"]
