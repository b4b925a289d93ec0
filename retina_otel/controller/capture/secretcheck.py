"""The output Secrets a Capture names: checked to exist with their keys; their values are never read."""

from __future__ import annotations

from retina_otel.controller import kube
from retina_otel.controller.capture.failure import CaptureFailure, Reason
from retina_otel.controller.kube import ApiError, KubeClient
from retina_otel.crds.capturejob import BLOB_SECRET_KEY, S3_ACCESS_KEY_ID_KEY, S3_SECRET_ACCESS_KEY_KEY
from retina_otel.crds.models import CaptureSpec

__all__ = ["check_secrets"]


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
