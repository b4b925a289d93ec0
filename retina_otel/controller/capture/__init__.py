"""Capture -> Jobs: validation, target resolution, Job manifests, status. One implementation, used by
the operator's handlers and by ``kubectl retina capture create`` (which runs without the operator).

Everything here is synchronous and talks to the API through :class:`~retina_otel.controller.kube.KubeClient`.
Secret *values* are never read into messages: the operator checks that a Secret and its keys exist, and
the Job mounts it as files.

Modules: :mod:`.settings` (knobs, labels), :mod:`.failure` (reasons), :mod:`.targets` (captureTarget ->
nodes and pod IPs), :mod:`.secretcheck` (output Secrets exist), :mod:`.manifest` (the Job for one node),
:mod:`.jobs` (plan, create, list, clean up), :mod:`.status` (status from the Jobs).
"""

from __future__ import annotations

from retina_otel.controller.capture.failure import CaptureFailure, JobsNotCreated, Reason
from retina_otel.controller.capture.jobs import cleanup_capture, create_jobs, list_capture_jobs, plan_jobs
from retina_otel.controller.capture.manifest import build_job, job_name
from retina_otel.controller.capture.settings import (
    APP_CAPTURE,
    DEFAULT_IMAGE,
    LABEL_APP,
    LABEL_CAPTURE,
    LABEL_GENERATED,
    CaptureSettings,
    capture_labels,
)
from retina_otel.controller.capture.status import NOT_CREATED, compute_status, failure_status, job_state, now_iso
from retina_otel.controller.capture.targets import Target, find_targets

__all__ = [
    "APP_CAPTURE",
    "DEFAULT_IMAGE",
    "LABEL_APP",
    "LABEL_CAPTURE",
    "LABEL_GENERATED",
    "NOT_CREATED",
    "CaptureFailure",
    "CaptureSettings",
    "JobsNotCreated",
    "Reason",
    "Target",
    "build_job",
    "capture_labels",
    "cleanup_capture",
    "compute_status",
    "create_jobs",
    "failure_status",
    "find_targets",
    "job_name",
    "job_state",
    "list_capture_jobs",
    "now_iso",
    "plan_jobs",
]
