"""The knobs for capture Jobs and the labels/annotations that tie a Job to its Capture."""

from __future__ import annotations

from dataclasses import dataclass, field

from retina_otel.crds.models import DEFAULT_HOST_PATH_BASE

__all__ = [
    "ANNOTATION_NODE",
    "APP_CAPTURE",
    "DEFAULT_IMAGE",
    "LABEL_APP",
    "LABEL_CAPTURE",
    "LABEL_GENERATED",
    "CaptureSettings",
    "capture_labels",
]

DEFAULT_IMAGE = "ghcr.io/retina-otel/retina-otel:0.1.0"

LABEL_APP = "retina.sh/app"
LABEL_CAPTURE = "retina.sh/capture-name"
LABEL_GENERATED = "retina.sh/generated-secret"
ANNOTATION_NODE = "retina.sh/node-name"
APP_CAPTURE = "capture"


@dataclass(frozen=True)
class CaptureSettings:
    """Operator-level (or CLI-level) knobs for the Jobs."""

    image: str = DEFAULT_IMAGE
    host_path_base: str = DEFAULT_HOST_PATH_BASE
    job_num_limit: int = 0
    image_pull_policy: str = "IfNotPresent"
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "100m", "memory": "128Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "512Mi"})
    #: Seconds a Job may run past the capture's duration (upload, metadata) before it is stopped.
    deadline_margin: int = 600


def capture_labels(name: str) -> dict[str, str]:
    return {LABEL_APP: APP_CAPTURE, LABEL_CAPTURE: name}
