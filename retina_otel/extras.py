"""Optional dependencies, installed with the package's extras (``pip install 'retina-otel[operator]'``).

The agent needs none of them: ``operator`` (kopf, the OpenTelemetry Prometheus exporter for the
operator's own metrics) and ``capture`` (the Azure Blob and S3 SDKs for capture uploads and
downloads). A command that needs a missing one fails with the extra to install, not an import traceback.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingExtraError", "missing_modules", "require_extra"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "operator": ("kopf", "opentelemetry.exporter.prometheus", "prometheus_client"),
    "capture": ("azure.storage.blob", "boto3"),
}
"""Extra -> the modules it provides (as imported)."""


class MissingExtraError(RuntimeError):
    """A feature needs an optional dependency that is not installed."""


def missing_modules(*modules: str) -> list[str]:
    """The ``modules`` that cannot be imported (checked without importing them)."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(module)
    return missing


def require_extra(extra: str, feature: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` when a module ``feature`` needs is missing
    (default: every module of the extra)."""
    missing = missing_modules(*(modules or EXTRAS[extra]))
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)}, from the '{extra}' extra: pip install 'retina-otel[{extra}]'"
        )
