"""``kubectl retina capture download``: a capture's tarballs from where its Jobs put them (blob
container, S3 bucket, or the nodes' hostPath through :mod:`retina_otel.kubectl_plugin.hostpath`)."""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable, Sequence

from retina_otel.capture.redact import redact_error, register_secret
from retina_otel.controller import kube
from retina_otel.controller.capture import LABEL_CAPTURE, list_capture_jobs
from retina_otel.controller.kube import KubeClient, Obj
from retina_otel.crds.capturejob import (
    BLOB_SECRET_KEY,
    ENV_SPEC,
    S3_ACCESS_KEY_ID_KEY,
    S3_SECRET_ACCESS_KEY_KEY,
    CaptureJobSpec,
)
from retina_otel.extras import require_extra

__all__ = ["capture_file_matcher", "download", "download_blob", "download_s3"]


def _job_spec(job: Obj) -> CaptureJobSpec | None:
    for env in job["spec"]["template"]["spec"]["containers"][0].get("env") or []:
        if env.get("name") == ENV_SPEC and env.get("value"):
            return CaptureJobSpec.from_json(env["value"])
    return None


def _secret_value(client: KubeClient, ns: str, name: str, key: str) -> str:
    secret = client.get(kube.SECRETS, name, ns)
    return base64.b64decode((secret.get("data") or {})[key]).decode()


def download(client: KubeClient, args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.all or args.all_namespaces):
        print("error: give --name NAME, or --all (this namespace) or --all-namespaces", file=sys.stderr)
        return 2
    if args.name:
        got, failed = _download_one(client, args, args.namespace, args.name, args.output)
        print(f"downloaded {got} file(s) to {args.output}")
        return 0 if got and not failed else 1
    jobs = list_capture_jobs(client, None if args.all_namespaces else args.namespace)
    captures = sorted({(j["metadata"].get("namespace", ""), j["metadata"]["labels"][LABEL_CAPTURE]) for j in jobs})
    if not captures:
        print("no captures found", file=sys.stderr)
        return 1
    total, any_failed = 0, False
    for ns, name in captures:
        dest = os.path.join(args.output, ns, name) if args.all_namespaces else os.path.join(args.output, name)
        got, failed = _download_one(client, args, ns, name, dest)
        print(f"capture {ns}/{name}: {got} file(s) to {dest}")
        total += got
        any_failed = any_failed or failed or not got
    print(f"downloaded {total} file(s) of {len(captures)} capture(s) to {args.output}")
    return 1 if any_failed else 0


def _download_one(
    client: KubeClient, args: argparse.Namespace, namespace: str, name: str, output: str
) -> tuple[int, bool]:
    """One capture's tarballs into ``output``: (files downloaded, whether a remote download failed)."""
    jobs = list_capture_jobs(client, namespace, name)
    if not jobs:
        print(f"no jobs for capture {namespace}/{name}", file=sys.stderr)
        return 0, True
    spec = _job_spec(jobs[0])
    if spec is None:
        print(f"the jobs of capture {namespace}/{name} carry no capture spec", file=sys.stderr)
        return 0, True
    vols = {v["name"]: v for v in jobs[0]["spec"]["template"]["spec"].get("volumes") or []}
    nodes = sorted({j["spec"]["template"]["spec"]["nodeName"] for j in jobs})
    os.makedirs(output, exist_ok=True)
    got = 0
    failed = False
    if spec.outputs.blob is not None:
        url = args.blob_url or _secret_value(
            client, namespace, vols["blob-secret"]["secret"]["secretName"], BLOB_SECRET_KEY
        )
        register_secret(url)
        try:
            got += download_blob(url, name, output, nodes)
        except Exception as exc:  # azure-core errors; the SAS token is redacted
            print(f"error: blob download failed: {redact_error(exc)}", file=sys.stderr)
            failed = True
    if spec.outputs.s3 is not None:
        secret = vols["s3-secret"]["secret"]["secretName"]
        key_id = _secret_value(client, namespace, secret, S3_ACCESS_KEY_ID_KEY)
        secret_key = _secret_value(client, namespace, secret, S3_SECRET_ACCESS_KEY_KEY)
        register_secret(secret_key)
        try:
            got += download_s3(
                spec.outputs.s3.bucket,
                spec.outputs.s3.path or "",
                name,
                output,
                endpoint=spec.outputs.s3.endpoint,
                region=spec.outputs.s3.region,
                key_id=key_id,
                secret_key=secret_key,
                nodes=nodes,
            )
        except Exception as exc:  # botocore errors
            print(f"error: S3 download failed: {redact_error(exc)}", file=sys.stderr)
            failed = True
    if spec.outputs.host_path_on_node and not got:
        from retina_otel.kubectl_plugin.hostpath import download_host_path

        for node in nodes:
            got += download_host_path(
                client, namespace, name, node, spec.outputs.host_path_on_node, output, args.helper_image
            )
    return got, failed


def capture_file_matcher(capture: str, nodes: Sequence[str] = ()) -> Callable[[str], bool]:
    """Whether an object name is one of this capture's tarballs: ``<capture>-<node>-<time>UTC.tar.gz``.

    With ``nodes`` (the capture's Jobs' nodes) another capture whose name merely starts with this
    one's (``cap`` vs ``cap-2``) is not matched.
    """
    prefixes = tuple(f"{capture}-{node}-" for node in nodes) or (f"{capture}-",)

    def match(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        return base.startswith(prefixes) and base.endswith(".tar.gz")

    return match


def download_blob(sas_url: str, capture: str, dest: str, nodes: Sequence[str] = ()) -> int:
    """Download the capture's tarballs (blobs named ``<capture>-<node>-...``) from a container SAS URL."""
    require_extra("capture", "kubectl retina capture download from blob storage", "azure.storage.blob")
    from azure.storage.blob import ContainerClient

    match = capture_file_matcher(capture, nodes)
    count = 0
    with ContainerClient.from_container_url(sas_url) as container:
        for blob in container.list_blobs(name_starts_with=capture):
            if not match(blob.name):
                continue
            target = os.path.join(dest, os.path.basename(blob.name))
            with open(target, "wb") as fh:
                container.download_blob(blob.name).readinto(fh)
            print(f"blob {blob.name} -> {target}")
            count += 1
    return count


def download_s3(
    bucket: str,
    path: str,
    capture: str,
    dest: str,
    *,
    endpoint: str | None,
    region: str | None,
    key_id: str,
    secret_key: str,
    nodes: Sequence[str] = (),
) -> int:
    """Download the capture's tarballs (objects ``<path>/<capture>-<node>-...``) from an S3 bucket."""
    require_extra("capture", "kubectl retina capture download from S3", "boto3")
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=region or None,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}) if endpoint else None,
    )
    prefix = "/".join(p for p in (path.strip("/"), capture) if p)
    match = capture_file_matcher(capture, nodes)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not match(obj["Key"]):
                continue
            target = os.path.join(dest, os.path.basename(obj["Key"]))
            s3.download_file(bucket, obj["Key"], target)
            print(f"s3://{bucket}/{obj['Key']} -> {target}")
            count += 1
    return count
