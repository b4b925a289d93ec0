"""A Capture's Jobs: planned (validate, resolve targets, check limits and secrets, build), created,
listed and cleaned up."""

from __future__ import annotations

from retina_otel.controller import kube
from retina_otel.controller.capture.failure import CaptureFailure, JobsNotCreated, Reason
from retina_otel.controller.capture.manifest import build_job
from retina_otel.controller.capture.secretcheck import check_secrets
from retina_otel.controller.capture.settings import (
    ANNOTATION_NODE,
    APP_CAPTURE,
    LABEL_APP,
    CaptureSettings,
    capture_labels,
)
from retina_otel.controller.capture.targets import find_targets
from retina_otel.controller.kube import ApiError, KubeClient, Obj, object_meta
from retina_otel.crds.models import CaptureSpec, SpecError, resolve_host_path, validate_spec

__all__ = ["cleanup_capture", "create_jobs", "list_capture_jobs", "plan_jobs"]


def plan_jobs(client: KubeClient, capture: Obj, settings: CaptureSettings) -> list[Obj]:
    """Validate the Capture, resolve targets, check limits and secrets; the Jobs to create.

    Raises :class:`CaptureFailure` with the reason and a message that says what to fix.
    """
    meta = object_meta(capture)
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    try:
        spec = validate_spec(CaptureSpec, capture.get("spec"))
        if spec.output_configuration.host_path:
            resolve_host_path(spec.output_configuration.host_path, settings.host_path_base)
    except SpecError as exc:
        raise CaptureFailure(Reason.INVALID_SPEC, str(exc)) from None
    try:
        targets = find_targets(client, namespace, spec.capture_configuration.capture_target)
    except ApiError as exc:
        raise CaptureFailure(Reason.OTHER_ERROR, f"cannot resolve capture targets: {exc}") from None
    limits = [x for x in (settings.job_num_limit, spec.capture_configuration.job_num_limit) if x > 0]
    if limits and len(targets) > min(limits):
        raise CaptureFailure(
            Reason.EXCEED_JOB_NUM_LIMIT,
            f"the capture targets {len(targets)} nodes but at most {min(limits)} capture jobs are allowed; "
            "narrow the target selector or raise the job number limit",
        )
    check_secrets(client, namespace, spec)
    return [build_job(name, namespace, spec, t, settings, owner=capture) for t in targets]


def create_jobs(client: KubeClient, jobs: list[Obj]) -> list[Obj]:
    """Create the Jobs (an existing one with the same name counts as created). Every Job is tried; when
    some fail, :class:`JobsNotCreated` carries the ones created and the nodes left without one."""
    created: list[Obj] = []
    missing: list[str] = []
    errors: list[str] = []
    for job in jobs:
        meta = object_meta(job)
        try:
            created.append(client.create(kube.JOBS, job, meta["namespace"]))
        except ApiError as exc:
            if exc.conflict:
                created.append(job)
                continue
            missing.append(str((meta.get("annotations") or {}).get(ANNOTATION_NODE, meta["name"])))
            errors.append(f"creating job {meta['namespace']}/{meta['name']} failed: {exc}")
    if missing:
        raise JobsNotCreated("; ".join(errors), created, missing)
    return created


def list_capture_jobs(client: KubeClient, namespace: str | None, name: str | None = None) -> list[Obj]:
    labels = capture_labels(name) if name else {LABEL_APP: APP_CAPTURE}
    return sorted(client.list(kube.JOBS, namespace, labels=labels), key=lambda j: str(object_meta(j).get("name")))


def cleanup_capture(client: KubeClient, namespace: str, name: str) -> tuple[list[str], list[str]]:
    """Delete the capture's Jobs; returns (deleted, failed) names. Secrets generated for the capture are
    not touched: they carry an owner reference to it and Kubernetes' garbage collector removes them with
    it, so the operator needs no ``list`` or ``delete`` on Secrets (only ``get`` by name)."""
    deleted: list[str] = []
    failed: list[str] = []
    for obj in list_capture_jobs(client, namespace, name):
        obj_name = str(object_meta(obj)["name"])
        try:
            client.delete(kube.JOBS, obj_name, namespace)
            deleted.append(obj_name)
        except ApiError:
            failed.append(obj_name)
    return deleted, failed
