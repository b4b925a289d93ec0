"""kopf handlers, registered on a private registry per operator run (so tests can run several).

Handlers are synchronous (kopf runs them in worker threads) and share one :class:`KubeClient`.
Capture status is always recomputed from the Capture's Jobs under a per-Capture lock, so events
arriving in any order converge on the same status.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from retina_otel.controller import kube
from retina_otel.controller.capture import (
    APP_CAPTURE,
    LABEL_APP,
    LABEL_CAPTURE,
    NOT_CREATED,
    CaptureFailure,
    CaptureSettings,
    JobsNotCreated,
    Reason,
    cleanup_capture,
    compute_status,
    create_jobs,
    failure_status,
    list_capture_jobs,
    now_iso,
    plan_jobs,
)
from retina_otel.controller.capture.settings import ANNOTATION_NODE
from retina_otel.controller.configs import (
    prune_endpoints,
    reconcile_metrics_configurations,
    reconcile_traces_configurations,
    sync_endpoint,
)
from retina_otel.controller.keyedlocks import KeyedLocks
from retina_otel.controller.kube import ApiError, KubeClient, Obj, object_meta
from retina_otel.controller.metrics import OperatorMetrics
from retina_otel.crds import crd_manifests

__all__ = ["FINALIZER", "OperatorConfig", "build_registry", "install_crds", "refresh_capture"]

log = logging.getLogger(__name__)

FINALIZER = "retina.sh/capture-cleanup"
_JOB_REASONS = {Reason.JOBS_IN_PROGRESS, Reason.JOBS_COMPLETED, Reason.RUN_JOB_FAILED}


@dataclass
class OperatorConfig:
    settings: CaptureSettings = field(default_factory=CaptureSettings)
    install_crds: bool = False
    retina_endpoints: bool = False
    resync_interval: float = 30.0
    api_url: str | None = None
    insecure: bool = False
    token: str | None = None


def install_crds(client: KubeClient) -> list[str]:
    """Create or update every retina.sh CRD (apiextensions.k8s.io/v1); returns 'created'/'updated' lines."""
    done = []
    for crd in crd_manifests():
        name = crd["metadata"]["name"]
        if client.get_or_none(kube.CRDS, name) is None:
            client.create(kube.CRDS, crd)
            done.append(f"created {name}")
        else:
            client.patch(kube.CRDS, name, {"metadata": {"labels": crd["metadata"]["labels"]}, "spec": crd["spec"]})
            done.append(f"updated {name}")
    return done


def _same(a: Obj, b: Obj) -> bool:
    def strip(s: Obj) -> Obj:
        out = {k: v for k, v in s.items() if v is not None}
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions") or []
        ]
        return out

    return strip(a) == strip(b)


def _has_final_failure(status: Obj) -> bool:
    return any(
        c.get("type") == "error" and c.get("status") == "True" and c.get("reason") not in _JOB_REASONS
        for c in status.get("conditions") or []
    )


def _running(status: Any) -> bool:
    """Jobs were started and have not all finished, or some nodes still have no Job: worth a periodic
    resync."""
    conditions = status.get("conditions") or []
    done = any(c.get("type") == "complete" and c.get("reason") != Reason.JOBS_IN_PROGRESS for c in conditions)
    return bool(status.get("startTime")) and (not done or bool(_nodes_without_job(status)))


def _nodes_without_job(status: Obj) -> list[str]:
    return [str(e.get("node")) for e in status.get("jobs") or [] if e.get("state") == NOT_CREATED]


def _create_missing(client: KubeClient, capture: Obj, settings: CaptureSettings, nodes: list[str]) -> list[str]:
    """Try again to create the Jobs of ``nodes`` (target nodes that have none: only those, not nodes that
    matched the target since); the nodes still without one. A node that is no longer a target (gone)
    stays missing: it never got its capture."""
    try:
        planned = plan_jobs(client, capture, settings)
    except CaptureFailure:
        return nodes
    wanted = [j for j in planned if (object_meta(j).get("annotations") or {}).get(ANNOTATION_NODE) in nodes]
    planned_nodes = {(object_meta(j).get("annotations") or {}).get(ANNOTATION_NODE) for j in wanted}
    try:
        create_jobs(client, wanted)
    except JobsNotCreated as failure:
        return sorted({*failure.missing, *(n for n in nodes if n not in planned_nodes)})
    return [n for n in nodes if n not in planned_nodes]


def refresh_capture(
    client: KubeClient,
    namespace: str,
    name: str,
    metrics: OperatorMetrics | None = None,
    settings: CaptureSettings | None = None,
) -> Obj | None:
    """Recompute a Capture's status from its Jobs and write it if it changed. With ``settings``, the Jobs
    of target nodes that have none yet (an earlier creation failed) are created first."""
    capture = client.get_or_none(kube.CAPTURES, name, namespace)
    if capture is None or (capture.get("metadata") or {}).get("deletionTimestamp"):
        return None
    old = capture.get("status") or {}
    missing: list[str] | None = None
    if settings is not None and _nodes_without_job(old):
        missing = _create_missing(client, capture, settings, _nodes_without_job(old))
    jobs = list_capture_jobs(client, namespace, name)
    if not jobs:
        return old
    new = compute_status(old, jobs, missing_nodes=missing)
    if metrics is not None:
        metrics.capture_status(namespace, name, new)
    if not _same(old, new):
        client.patch_status(kube.CAPTURES, name, new, namespace)
        log.info("capture %s/%s: active=%d succeeded=%d failed=%d", namespace, name,
                 new["active"], new["succeeded"], new["failed"])
    if _clean_up_now(capture, new):
        # Retina's cleanUpAfterUpload: the delete handler removes the Jobs; generated Secrets go with the
        # Capture through their owner references (garbage collection).
        client.delete(kube.CAPTURES, name, namespace)
        log.info("capture %s/%s: all jobs succeeded and uploaded; removed (cleanUpAfterUpload)", namespace, name)
    return new


def _clean_up_now(capture: Obj, status: Obj) -> bool:
    """cleanUpAfterUpload and every Job succeeded (a failed one keeps everything for debugging)."""
    if not (capture.get("spec") or {}).get("cleanUpAfterUpload"):
        return False
    return bool(status.get("succeeded")) and not status.get("active") and not status.get("failed")


def build_registry(
    cfg: OperatorConfig, client: KubeClient, metrics: OperatorMetrics | None = None
) -> kopf.OperatorRegistry:
    """The operator's handlers; ``metrics`` (when given) counts what they do."""
    registry = kopf.OperatorRegistry()
    m = metrics if metrics is not None else OperatorMetrics.disabled()
    locks = KeyedLocks()  # per Capture and per pod, forgotten when no handler holds or waits for them
    configs_lock = threading.Lock()

    @kopf.on.login(registry=registry)  # type: ignore[arg-type]
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if cfg.api_url:
            return kopf.ConnectionInfo(server=cfg.api_url, insecure=cfg.insecure, token=cfg.token)
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)  # type: ignore[arg-type]
    def startup(logger: logging.Logger, **_: Any) -> None:
        if cfg.install_crds:
            for line in install_crds(client):
                logger.info("CRD %s", line)
        if cfg.retina_endpoints:
            for gone in prune_endpoints(client):
                logger.info("removed stale RetinaEndpoint %s", gone)

    # -- Capture ------------------------------------------------------------------------------------

    def reconcile_capture(body: kopf.Body, logger: Any) -> bool:
        """False when the Capture cannot start (its status says why)."""
        name, namespace = str(body.metadata.name), str(body.metadata.namespace)
        with locks.hold(namespace, name):
            capture = client.get_or_none(kube.CAPTURES, name, namespace)
            if capture is None or (capture.get("metadata") or {}).get("deletionTimestamp"):
                return True
            status = capture.get("status") or {}
            if status.get("startTime") or list_capture_jobs(client, namespace, name):
                refresh_capture(client, namespace, name, m, cfg.settings)
                return True
            if _has_final_failure(status):
                return False
            try:
                jobs = plan_jobs(client, capture, cfg.settings)
                created = create_jobs(client, jobs)
            except JobsNotCreated as failure:  # some nodes have a Job: it runs; the status names the others
                logger.warning("capture %s/%s: %s", namespace, name, failure.message)
                m.jobs_created(len(failure.created))
                partial = compute_status({"startTime": now_iso()}, failure.created, missing_nodes=failure.missing)
                client.patch_status(kube.CAPTURES, name, partial, namespace)
                m.capture_status(namespace, name, partial)
                return False
            except CaptureFailure as failure:
                logger.warning("capture %s/%s not started (%s): %s", namespace, name, failure.reason, failure.message)
                failed = failure_status(status, failure)
                client.patch_status(kube.CAPTURES, name, failed, namespace)
                m.capture_status(namespace, name, failed)
                return False
            m.jobs_created(len(created))
            new = compute_status({"startTime": now_iso()}, created)
            client.patch_status(kube.CAPTURES, name, new, namespace)
            m.capture_status(namespace, name, new)
            logger.info("capture %s/%s: created %d job(s)", namespace, name, len(created))
            return True

    @kopf.on.resume("retina.sh", "v1alpha1", "captures", registry=registry)  # type: ignore[arg-type]
    @kopf.on.create("retina.sh", "v1alpha1", "captures", registry=registry)  # type: ignore[arg-type]
    def capture_created(body: kopf.Body, logger: Any, **_: Any) -> None:
        try:
            m.reconciled("Capture", "ok" if reconcile_capture(body, logger) else "failed")
        except ApiError as exc:
            m.reconciled("Capture", "api_error")
            raise kopf.TemporaryError(f"API error while starting the capture: {exc}", delay=5) from None

    @kopf.on.delete("retina.sh", "v1alpha1", "captures", registry=registry)  # type: ignore[arg-type]
    def capture_deleted(name: str, namespace: str, logger: Any, **_: Any) -> None:
        with locks.hold(namespace, name):
            deleted, failed = cleanup_capture(client, namespace, name)
        if failed:
            raise kopf.TemporaryError(f"could not delete {', '.join(failed)}; retrying", delay=5)
        logger.info("capture %s/%s: removed %s", namespace, name, ", ".join(deleted) or "nothing")
        m.capture_status(namespace, name, None)

    @kopf.on.event(  # type: ignore[arg-type]
        "batch", "v1", "jobs", labels={LABEL_APP: APP_CAPTURE, LABEL_CAPTURE: kopf.PRESENT}, registry=registry
    )
    def job_event(body: kopf.Body, **_: Any) -> None:
        capture_name = str(body.metadata.labels.get(LABEL_CAPTURE))
        namespace = str(body.metadata.namespace)
        with locks.hold(namespace, capture_name):
            try:
                refresh_capture(client, namespace, capture_name, m, cfg.settings)
            except ApiError as exc:
                log.warning("capture %s/%s: status refresh failed: %s", namespace, capture_name, exc)

    if cfg.resync_interval > 0:

        @kopf.timer(  # type: ignore[arg-type]
            "retina.sh", "v1alpha1", "captures", interval=cfg.resync_interval, registry=registry,
            when=lambda status, **_: _running(status),
        )
        def capture_resync(name: str, namespace: str, **_: Any) -> None:
            with locks.hold(namespace, name):
                refresh_capture(client, namespace, name, m, cfg.settings)

    # -- MetricsConfiguration / TracesConfiguration -------------------------------------------------

    @kopf.on.event("retina.sh", "v1alpha1", "metricsconfigurations", registry=registry)  # type: ignore[arg-type]
    def metrics_event(**_: Any) -> None:
        with configs_lock:
            reconcile_metrics_configurations(client)
        m.reconciled("MetricsConfiguration")

    @kopf.on.event("retina.sh", "v1alpha1", "tracesconfigurations", registry=registry)  # type: ignore[arg-type]
    def traces_event(**_: Any) -> None:
        with configs_lock:
            reconcile_traces_configurations(client)
        m.reconciled("TracesConfiguration")

    # -- RetinaEndpoint -----------------------------------------------------------------------------

    if cfg.retina_endpoints:

        @kopf.on.event("", "v1", "pods", registry=registry)  # type: ignore[arg-type]
        def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            pod = dict(body)
            key = (str(body.metadata.namespace), f"pod/{body.metadata.name}")
            with locks.hold(*key):
                try:
                    sync_endpoint(client, event.get("type"), pod)
                    m.reconciled("RetinaEndpoint")
                except ApiError as exc:
                    m.reconciled("RetinaEndpoint", "api_error")
                    log.warning("RetinaEndpoint %s/%s: %s", key[0], body.metadata.name, exc)

    return registry
