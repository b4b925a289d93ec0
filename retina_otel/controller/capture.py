"""Capture -> Jobs: validation, target resolution, Job manifests, status. One implementation, used by
the operator's handlers and by ``kubectl retina capture create`` (which runs without the operator).

Everything here is synchronous and talks to the API through :class:`~.kube.KubeClient`. Secret
*values* are never read into messages: the operator checks that a Secret and its keys exist, and the
Job mounts it as files.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from retina_otel.controller import kube
from retina_otel.controller.kube import ApiError, KubeClient, Obj
from retina_otel.crds.capturejob import (
    BLOB_SECRET_KEY,
    ENV_CAPTURE_NAME,
    ENV_NODE_NAME,
    ENV_SPEC,
    HOST_PATH_MOUNT,
    PVC_MOUNT,
    S3_ACCESS_KEY_ID_KEY,
    S3_SECRET_ACCESS_KEY_KEY,
    SECRETS_MOUNT,
    WORK_DIR,
    BlobOutput,
    CaptureFilter,
    CaptureJobSpec,
    CaptureOutputs,
    S3Output,
    TcpdumpFlags,
)
from retina_otel.crds.models import (
    DEFAULT_HOST_PATH_BASE,
    CaptureSpec,
    CaptureTarget,
    LabelSelector,
    SpecError,
    resolve_host_path,
    validate_spec,
)

__all__ = [
    "DEFAULT_IMAGE",
    "LABEL_APP",
    "LABEL_CAPTURE",
    "LABEL_GENERATED",
    "CaptureFailure",
    "CaptureSettings",
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
    "plan_jobs",
]

DEFAULT_IMAGE = "ghcr.io/retina-otel/retina-otel:0.1.0"

LABEL_APP = "retina.sh/app"
LABEL_CAPTURE = "retina.sh/capture-name"
LABEL_GENERATED = "retina.sh/generated-secret"
ANNOTATION_NODE = "retina.sh/node-name"
APP_CAPTURE = "capture"


class Reason:
    """Condition reasons (Retina's, plus InvalidSpec for specs that fail validation)."""

    JOBS_IN_PROGRESS = "JobsInProgress"
    JOBS_COMPLETED = "JobsCompleted"
    RUN_JOB_FAILED = "RunJobFailed"
    EXCEED_JOB_NUM_LIMIT = "ExceedJobNumLimit"
    FIND_SECRET_FAILED = "FindSecretFailed"
    CREATE_JOB_FAILED = "CreateJobFailed"
    INVALID_SPEC = "InvalidSpec"
    OTHER_ERROR = "OtherError"


class CaptureFailure(Exception):
    """A Capture that cannot run; ``reason`` is a :class:`Reason`, ``message`` says what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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


@dataclass(frozen=True)
class Target:
    node: str
    pod_ips: tuple[str, ...] = ()


def capture_labels(name: str) -> dict[str, str]:
    return {LABEL_APP: APP_CAPTURE, LABEL_CAPTURE: name}


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------


def _meta(obj: Obj) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


def _pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def _runnable(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return bool((pod.get("spec") or {}).get("nodeName")) and phase not in ("Succeeded", "Failed")


def _group_pods(pods: list[Obj]) -> list[Target]:
    by_node: dict[str, list[str]] = {}
    for pod in pods:
        node = str(pod["spec"]["nodeName"])
        by_node.setdefault(node, [])
        for ip in _pod_ips(pod):
            if ip not in by_node[node]:
                by_node[node].append(ip)
    return [Target(node, tuple(ips)) for node, ips in sorted(by_node.items())]


def find_targets(client: KubeClient, namespace: str, target: CaptureTarget) -> list[Target]:
    """Nodes to run on (sorted), each with the targeted pods' IPs; selectors are applied here."""
    if target.node_selector is not None:
        sel = target.node_selector
        nodes = [n for n in client.list(kube.NODES) if sel.matches(_meta(n).get("labels"))]
        if not nodes:
            raise CaptureFailure(
                Reason.OTHER_ERROR,
                f"no node matches captureTarget.nodeSelector ({sel.describe()}); fix the selector",
            )
        return [Target(str(_meta(n)["name"])) for n in sorted(nodes, key=lambda n: str(_meta(n)["name"]))]

    if target.pod_names is not None:
        pods = []
        for item in target.pod_names:
            ns, _, name = item.rpartition("/")
            ns = ns or namespace
            pod = client.get_or_none(kube.PODS, name, ns)
            if pod is None:
                raise CaptureFailure(
                    Reason.OTHER_ERROR, f"pod {ns}/{name} (captureTarget.podNames) not found; fix the name"
                )
            if not _runnable(pod):
                raise CaptureFailure(
                    Reason.OTHER_ERROR, f"pod {ns}/{name} is not running on a node; capture it once it is scheduled"
                )
            pods.append(pod)
        return _group_pods(pods)

    assert target.pod_selector is not None
    pod_sel: LabelSelector = target.pod_selector
    if target.namespace_selector is not None:
        ns_sel = target.namespace_selector
        namespaces = {
            str(_meta(n)["name"]) for n in client.list(kube.NAMESPACES) if ns_sel.matches(_meta(n).get("labels"))
        }
        where = f"namespaces matching {ns_sel.describe()}"
    else:
        namespaces = {namespace}
        where = f"namespace {namespace}"
    pods = [
        p
        for p in (client.list(kube.PODS, namespace) if namespaces == {namespace} else client.list(kube.PODS))
        if _meta(p).get("namespace") in namespaces and pod_sel.matches(_meta(p).get("labels")) and _runnable(p)
    ]
    if not pods:
        raise CaptureFailure(
            Reason.OTHER_ERROR,
            f"no running pod matches captureTarget.podSelector ({pod_sel.describe()}) in {where}; "
            "fix the selectors",
        )
    return _group_pods(pods)


# ---------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------


def _check_secret(client: KubeClient, namespace: str, name: str, keys: list[str], field_name: str) -> None:
    try:
        secret = client.get_or_none(kube.SECRETS, name, namespace)
    except ApiError as exc:
        raise CaptureFailure(
            Reason.FIND_SECRET_FAILED, f"cannot read secret {namespace}/{name}: {exc.reason}"
        ) from None
    if secret is None:
        raise CaptureFailure(
            Reason.FIND_SECRET_FAILED,
            f"secret {name!r} ({field_name}) not found in namespace {namespace}; create it with "
            f"key(s) {', '.join(keys)}",
        )
    present = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
    missing = [k for k in keys if k not in present]
    if missing:
        raise CaptureFailure(
            Reason.FIND_SECRET_FAILED,
            f"secret {namespace}/{name} ({field_name}) has no key(s) {', '.join(missing)}; add them",
        )


def check_secrets(client: KubeClient, namespace: str, spec: CaptureSpec) -> None:
    out = spec.output_configuration
    if out.blob_upload:
        _check_secret(client, namespace, out.blob_upload, [BLOB_SECRET_KEY], "outputConfiguration.blobUpload")
    if out.s3_upload:
        _check_secret(
            client,
            namespace,
            out.s3_upload.secret_name,
            [S3_ACCESS_KEY_ID_KEY, S3_SECRET_ACCESS_KEY_KEY],
            "outputConfiguration.s3Upload.secretName",
        )


# ---------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


def job_name(capture: str, node: str) -> str:
    """``<capture>-<node>``, made a valid name of at most 63 characters, stable per (capture, node)."""
    raw = f"{capture}-{_DNS_LABEL.sub('-', node.lower())}".strip("-")
    if len(raw) <= 63:
        return raw
    digest = hashlib.sha256(f"{capture}\0{node}".encode()).hexdigest()[:8]
    return f"{raw[:54].rstrip('-')}-{digest}"


def job_spec(name: str, namespace: str, spec: CaptureSpec, target: Target, settings: CaptureSettings) -> CaptureJobSpec:
    conf = spec.capture_configuration
    opt = conf.capture_option
    out = spec.output_configuration
    filters = [f for f in (conf.tcpdump_filter, opt.pcap_filter) if f]
    pcap = " and ".join(f"({f})" for f in filters) if len(filters) > 1 else (filters[0] if filters else None)
    outputs = CaptureOutputs(
        host_path=HOST_PATH_MOUNT if out.host_path else None,
        host_path_on_node=resolve_host_path(out.host_path, settings.host_path_base) if out.host_path else None,
        pvc_mount_path=PVC_MOUNT if out.persistent_volume_claim else None,
        blob=BlobOutput(sas_url_file=f"{SECRETS_MOUNT}/blob/{BLOB_SECRET_KEY}") if out.blob_upload else None,
        s3=S3Output(
            bucket=out.s3_upload.bucket,
            endpoint=out.s3_upload.endpoint,
            region=out.s3_upload.region,
            path=out.s3_upload.path,
            access_key_id_file=f"{SECRETS_MOUNT}/s3/{S3_ACCESS_KEY_ID_KEY}",
            secret_access_key_file=f"{SECRETS_MOUNT}/s3/{S3_SECRET_ACCESS_KEY_KEY}",
        )
        if out.s3_upload
        else None,
    )
    return CaptureJobSpec(
        capture_name=name,
        capture_namespace=namespace,
        filter=CaptureFilter(
            include=list(conf.filters.include) if conf.filters else [],
            exclude=list(conf.filters.exclude) if conf.filters else [],
            source_ips=list(opt.source_i_ps),
            destination_ips=list(opt.destination_i_ps),
            pod_ips=list(target.pod_ips),
            pcap_filter=pcap,
        ),
        duration_seconds=opt.duration_seconds,
        max_capture_size_mb=opt.max_capture_size,
        packet_size=opt.packet_size,
        file_count=opt.file_count,
        interfaces=list(opt.interfaces),
        include_metadata=conf.include_metadata,
        tcpdump=TcpdumpFlags.model_validate(opt.tcpdump_flags()),
        work_dir=WORK_DIR,
        outputs=outputs,
    )


def build_job(
    name: str,
    namespace: str,
    spec: CaptureSpec,
    target: Target,
    settings: CaptureSettings,
    owner: Obj | None = None,
) -> Obj:
    """The batch/v1 Job that captures on ``target.node``."""
    cjs = job_spec(name, namespace, spec, target, settings)
    out = spec.output_configuration
    labels = capture_labels(name)
    volumes: list[Obj] = [{"name": "work", "emptyDir": {}}]
    mounts: list[Obj] = [{"name": "work", "mountPath": WORK_DIR}]
    if cjs.outputs.host_path_on_node:
        volumes.append(
            {"name": "hostpath", "hostPath": {"path": cjs.outputs.host_path_on_node, "type": "DirectoryOrCreate"}}
        )
        mounts.append({"name": "hostpath", "mountPath": HOST_PATH_MOUNT})
    if out.persistent_volume_claim:
        volumes.append({"name": "pvc", "persistentVolumeClaim": {"claimName": out.persistent_volume_claim}})
        mounts.append({"name": "pvc", "mountPath": PVC_MOUNT})
    if out.blob_upload:
        volumes.append(
            {
                "name": "blob-secret",
                "secret": {
                    "secretName": out.blob_upload,
                    "items": [{"key": BLOB_SECRET_KEY, "path": BLOB_SECRET_KEY}],
                    "defaultMode": 0o400,
                },
            }
        )
        mounts.append({"name": "blob-secret", "mountPath": f"{SECRETS_MOUNT}/blob", "readOnly": True})
    if out.s3_upload:
        volumes.append(
            {
                "name": "s3-secret",
                "secret": {
                    "secretName": out.s3_upload.secret_name,
                    "items": [
                        {"key": S3_ACCESS_KEY_ID_KEY, "path": S3_ACCESS_KEY_ID_KEY},
                        {"key": S3_SECRET_ACCESS_KEY_KEY, "path": S3_SECRET_ACCESS_KEY_KEY},
                    ],
                    "defaultMode": 0o400,
                },
            }
        )
        mounts.append({"name": "s3-secret", "mountPath": f"{SECRETS_MOUNT}/s3", "readOnly": True})

    def field_env(env_name: str, path: str) -> Obj:
        return {"name": env_name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    container: Obj = {
        "name": "capture",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["retina-otel", "capture", "run"],
        "env": [
            {"name": ENV_SPEC, "value": cjs.to_json()},
            {"name": ENV_CAPTURE_NAME, "value": name},
            field_env(ENV_NODE_NAME, "spec.nodeName"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ],
        "volumeMounts": mounts,
        "resources": {"requests": dict(settings.requests), "limits": dict(settings.limits)},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
    }
    job_spec_: Obj = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": {ANNOTATION_NODE: target.node}},
            "spec": {
                "nodeName": target.node,
                "hostNetwork": True,
                "dnsPolicy": "ClusterFirstWithHostNet",
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 60,
                "tolerations": [{"operator": "Exists"}],
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if cjs.duration_seconds:
        job_spec_["activeDeadlineSeconds"] = int(cjs.duration_seconds) + settings.deadline_margin
    metadata: Obj = {
        "name": job_name(name, target.node),
        "namespace": namespace,
        "labels": dict(labels),
        "annotations": {ANNOTATION_NODE: target.node},
    }
    owner_meta = _meta(owner) if owner else {}
    if owner_meta.get("uid"):
        metadata["ownerReferences"] = [
            {
                "apiVersion": "retina.sh/v1alpha1",
                "kind": "Capture",
                "name": owner_meta["name"],
                "uid": owner_meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec_}


def plan_jobs(client: KubeClient, capture: Obj, settings: CaptureSettings) -> list[Obj]:
    """Validate the Capture, resolve targets, check limits and secrets; the Jobs to create.

    Raises :class:`CaptureFailure` with the reason and a message that says what to fix.
    """
    meta = _meta(capture)
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
    """Create the Jobs (an existing one with the same name counts as created)."""
    created = []
    for job in jobs:
        meta = _meta(job)
        try:
            created.append(client.create(kube.JOBS, job, meta["namespace"]))
        except ApiError as exc:
            if exc.conflict:
                created.append(job)
                continue
            raise CaptureFailure(
                Reason.CREATE_JOB_FAILED, f"creating job {meta['namespace']}/{meta['name']} failed: {exc}"
            ) from None
    return created


def list_capture_jobs(client: KubeClient, namespace: str | None, name: str | None = None) -> list[Obj]:
    labels = capture_labels(name) if name else {LABEL_APP: APP_CAPTURE}
    return sorted(client.list(kube.JOBS, namespace, labels=labels), key=lambda j: str(_meta(j).get("name")))


def cleanup_capture(client: KubeClient, namespace: str, name: str) -> tuple[list[str], list[str]]:
    """Delete the capture's Jobs and the Secrets generated for it; returns (deleted, failed) names."""
    deleted: list[str] = []
    failed: list[str] = []
    jobs = list_capture_jobs(client, namespace, name)
    secrets = client.list(kube.SECRETS, namespace, labels={**capture_labels(name), LABEL_GENERATED: "true"})
    for res, objs in ((kube.JOBS, jobs), (kube.SECRETS, secrets)):
        for obj in objs:
            obj_name = str(_meta(obj)["name"])
            try:
                client.delete(res, obj_name, namespace)
                deleted.append(obj_name)
            except ApiError:
                failed.append(obj_name)
    return deleted, failed


# ---------------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------------


def job_state(job: Obj) -> str:
    """``succeeded``, ``failed`` or ``active`` (pending or running)."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True":
            if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
                return "succeeded"
            if cond.get("type") in ("Failed", "FailureTarget"):
                return "failed"
    if int(status.get("succeeded") or 0) > 0:
        return "succeeded"
    if int(status.get("failed") or 0) > 0:
        return "failed"
    return "active"


def _condition(ctype: str, status: bool, reason: str, message: str, previous: list[Obj], now: str) -> Obj:
    text = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    keep = old is not None and old.get("status") == text and old.get("lastTransitionTime")
    since = old["lastTransitionTime"] if keep and old is not None else now
    return {"type": ctype, "status": text, "reason": reason, "message": message, "lastTransitionTime": since}


def failure_status(old_status: Obj | None, failure: CaptureFailure, now: str | None = None) -> Obj:
    now = now or now_iso()
    prev = list((old_status or {}).get("conditions") or [])
    return {
        "conditions": [
            _condition("complete", False, failure.reason, failure.message, prev, now),
            _condition("error", True, failure.reason, failure.message, prev, now),
        ],
        "active": 0,
        "succeeded": 0,
        "failed": 0,
    }


def compute_status(old_status: Obj | None, jobs: list[Obj], now: str | None = None) -> Obj:
    """Status from the Capture's Jobs (counts, conditions, times)."""
    now = now or now_iso()
    old = old_status or {}
    prev = list(old.get("conditions") or [])
    states = [(j, job_state(j)) for j in jobs]
    active = sum(1 for _, s in states if s == "active")
    succeeded = sum(1 for _, s in states if s == "succeeded")
    failed = sum(1 for _, s in states if s == "failed")
    total = len(states)
    failed_nodes = sorted(
        str((_meta(j).get("annotations") or {}).get(ANNOTATION_NODE, _meta(j).get("name")))
        for j, s in states
        if s == "failed"
    )
    conditions: list[Obj] = []
    status: Obj = {
        "startTime": old.get("startTime") or now,
        "active": active,
        "succeeded": succeeded,
        "failed": failed,
        "jobs": [
            {
                "name": str(_meta(j).get("name")),
                "node": str((_meta(j).get("annotations") or {}).get(ANNOTATION_NODE, "")),
                "state": s,
            }
            for j, s in states
        ],
    }
    fail_msg = (
        f"{failed} of {total} capture jobs failed (nodes: {', '.join(failed_nodes)}); "
        "see the logs of the jobs' pods"
    )
    if active:
        conditions.append(
            _condition(
                "complete", False, Reason.JOBS_IN_PROGRESS, f"{active} of {total} capture jobs running", prev, now
            )
        )
        if failed:
            conditions.append(_condition("error", True, Reason.RUN_JOB_FAILED, fail_msg, prev, now))
        status["completionTime"] = None
    elif failed:
        conditions.append(_condition("complete", False, Reason.RUN_JOB_FAILED, fail_msg, prev, now))
        conditions.append(_condition("error", True, Reason.RUN_JOB_FAILED, fail_msg, prev, now))
        status["completionTime"] = None
    else:
        conditions.append(
            _condition("complete", True, Reason.JOBS_COMPLETED, f"all {total} capture jobs completed", prev, now)
        )
        status["completionTime"] = old.get("completionTime") or now
    status["conditions"] = conditions
    return status
