"""The batch/v1 Job manifest that captures on one node: name, the capture job's spec, volumes, env."""

from __future__ import annotations

import hashlib
import re

from retina_otel.controller.capture.settings import ANNOTATION_NODE, CaptureSettings, capture_labels
from retina_otel.controller.capture.targets import Target
from retina_otel.controller.kube import Obj, object_meta
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
from retina_otel.crds.models import CaptureSpec, resolve_host_path

__all__ = ["build_job", "job_name", "job_spec"]

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
    owner_meta = object_meta(owner) if owner else {}
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
