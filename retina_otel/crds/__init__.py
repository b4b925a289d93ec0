"""retina.sh/v1alpha1 CRDs: definitions (:mod:`.schemas`), spec models (:mod:`.models`) and the
capture Job interface (:mod:`.capturejob`).

``render_crds()`` is what ``retina-otel crds`` prints and what the Helm chart ships.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from retina_otel.crds.schemas import CRDS, GROUP, KINDS, VERSION, crd_names

__all__ = ["CRDS", "GROUP", "KINDS", "VERSION", "crd_manifests", "crd_names", "render_crds"]


def crd_manifests() -> list[dict[str, Any]]:
    """Deep copies of the CRD objects (safe to mutate)."""
    return copy.deepcopy(CRDS)


def render_crds() -> str:
    """All CRDs as one multi-document YAML stream (``retina-otel crds`` / chart ``crds/``)."""
    return yaml.safe_dump_all(crd_manifests(), sort_keys=False, explicit_start=True, allow_unicode=True)
