"""Copy the tarball to every configured output; each output reports its own success or failure.

A failure never raises out of :func:`deliver` and never removes the local tarball. Error messages are
written for the person fixing the Capture (which secret, which permission) and pass through
:func:`redact`, so a SAS token or key never reaches a log, the result or a Kubernetes event.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retina_otel.extras import require_extra

from .redact import redact, redact_error, register_secret
from .spec import CaptureOutputs, S3Output

__all__ = ["OutputResult", "copy_to_directory", "deliver", "read_secret_file", "upload_blob", "upload_s3"]

MAX_SECRET_BYTES = 64 * 1024


@dataclass
class OutputResult:
    type: str
    location: str
    ok: bool
    error: str | None = None
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["location"] = redact(self.location)
        if self.error is not None:
            data["error"] = redact(self.error)
        return {k: v for k, v in data.items() if v is not None}


class OutputError(RuntimeError):
    """An output cannot be used; the message is safe to show (already free of secrets)."""


def read_secret_file(path: str, what: str) -> str:
    """The stripped content of a mounted secret file, registered for redaction."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise OutputError(f"{what} file {path} does not exist; is the secret mounted?") from None
    except OSError as exc:
        raise OutputError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise OutputError(f"{what} file {path} is larger than {MAX_SECRET_BYTES} bytes; wrong file?")
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise OutputError(f"{what} file {path} is not UTF-8 text") from None
    register_secret(value)
    if not value:
        raise OutputError(f"{what} file {path} is empty")
    return value


def copy_to_directory(tarball: Path, directory: str, kind: str) -> OutputResult:
    """Copy (via a temporary name and an atomic rename) into ``directory``."""
    target = Path(directory) / tarball.name
    partial = Path(directory) / f".{tarball.name}.partial"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tarball, partial)
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        return OutputResult(kind, str(target), False, f"cannot write {target}: {exc.strerror or exc}")
    return OutputResult(kind, str(target), True, bytes=target.stat().st_size)


# ---------------------------------------------------------------- Azure Blob


def _container_location(url: str, blob_name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/{blob_name}"


def _check_sas_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OutputError(
            "the blob secret does not hold a SAS URL; expected "
            "https://<account>.blob.core.windows.net/<container>?<SAS token>"
        )
    if not parts.path.strip("/"):
        raise OutputError(
            "the blob SAS URL names no container; expected https://<account>.blob.core.windows.net/<container>?<SAS>"
        )
    query = urllib.parse.parse_qs(parts.query)
    if "sig" not in query:
        raise OutputError("the blob SAS URL has no SAS token (no 'sig' parameter); generate a container SAS URL")


def upload_blob(tarball: Path, sas_url_file: str, *, timeout: float = 120) -> OutputResult:
    """Upload to ``<container>/<tarball name>`` with the container SAS URL read from ``sas_url_file``."""
    location = f"(SAS URL in {sas_url_file})/{tarball.name}"
    try:
        url = read_secret_file(sas_url_file, "blob SAS URL")
        _check_sas_url(url)
        location = _container_location(url, tarball.name)
        _blob_put(url, tarball, timeout)
    except OutputError as exc:
        return OutputResult("blobUpload", location, False, redact(str(exc)))
    except Exception as exc:  # an SDK error we did not map: still a result, never a secret
        return OutputResult("blobUpload", location, False, f"blob upload failed: {redact_error(exc)}")
    return OutputResult("blobUpload", location, True, bytes=tarball.stat().st_size)


def _blob_put(url: str, tarball: Path, timeout: float) -> None:
    require_extra("capture", "the blob upload", "azure.storage.blob")
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )
    from azure.storage.blob import ContainerClient

    try:
        client = ContainerClient.from_container_url(url, retry_total=1, connection_timeout=10, read_timeout=timeout)
    except ValueError:
        raise OutputError(
            "the blob SAS URL is malformed; expected https://<account>.blob.core.windows.net/<container>?<SAS>"
        ) from None
    container = client.container_name
    try:
        with client, open(tarball, "rb") as data:
            client.upload_blob(tarball.name, data, overwrite=True, max_concurrency=2)
    except ClientAuthenticationError as exc:
        raise OutputError(
            f"Azure refused the SAS URL for container {container!r} ({_az_code(exc)}): check the SAS URL's "
            "signature, expiry and permissions (it needs create and write)"
        ) from None
    except ResourceNotFoundError as exc:
        raise OutputError(f"container {container!r} does not exist ({_az_code(exc)})") from None
    except HttpResponseError as exc:
        if exc.status_code == 403:
            raise OutputError(
                f"Azure refused the SAS URL for container {container!r} ({_az_code(exc)}): check the SAS URL's "
                "signature, expiry and permissions (it needs create and write)"
            ) from None
        raise OutputError(f"blob upload to container {container!r} failed ({_az_code(exc)})") from None
    except ServiceRequestError as exc:
        host = urllib.parse.urlsplit(url).netloc
        raise OutputError(f"cannot reach the blob endpoint {host}: {redact_error(exc)}") from None
    except OSError as exc:
        raise OutputError(f"blob upload failed: {redact_error(exc)}") from None


def _az_code(exc: Any) -> str:
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # StorageErrorCode is an enum
    status = getattr(exc, "status_code", None)
    bits = [f"HTTP {status}" if status else "", str(code) if code else ""]
    return " ".join(b for b in bits if b) or type(exc).__name__


# ---------------------------------------------------------------- S3


def s3_key(prefix: str, name: str) -> str:
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


_S3_HINTS = {
    "InvalidAccessKeyId": "the access key id is not known to the endpoint; check the secret's access key",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "AccessDenied": "the key may not write to this bucket and path (needs s3:PutObject)",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
    "PermanentRedirect": "the bucket is in another region; set the region",
    "AuthorizationHeaderMalformed": "the region is wrong for this bucket",
}


def upload_s3(tarball: Path, s3: S3Output, *, timeout: float = 120) -> OutputResult:
    key = s3_key(s3.path, tarball.name)
    endpoint = s3.endpoint or "aws"
    location = f"s3://{s3.bucket}/{key} ({endpoint})"
    try:
        access_key = read_secret_file(s3.access_key_id_file, "S3 access key id")
        secret_key = read_secret_file(s3.secret_access_key_file, "S3 secret access key")
        token = read_secret_file(s3.session_token_file, "S3 session token") if s3.session_token_file else None
        _s3_put(tarball, s3, key, access_key, secret_key, token, timeout)
    except OutputError as exc:
        return OutputResult("s3Upload", location, False, redact(str(exc)))
    except Exception as exc:  # an SDK error we did not map: still a result, never a secret
        return OutputResult("s3Upload", location, False, f"S3 upload failed: {redact_error(exc)}")
    return OutputResult("s3Upload", location, True, bytes=tarball.stat().st_size)


def _s3_put(
    tarball: Path, s3: S3Output, key: str, access_key: str, secret_key: str, token: str | None, timeout: float
) -> None:
    require_extra("capture", "the S3 upload", "boto3")
    import boto3
    from boto3.exceptions import S3UploadFailedError
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    config = Config(
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=10,
        read_timeout=timeout,
        s3={"addressing_style": "path"} if s3.endpoint else None,
    )
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=s3.endpoint,
            region_name=s3.region or "us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
            config=config,
        )
        client.upload_file(str(tarball), s3.bucket, key)
    except (ClientError, S3UploadFailedError) as exc:
        code = _s3_code(exc)
        hint = _S3_HINTS.get(code, "")
        raise OutputError(
            f"S3 refused the upload to bucket {s3.bucket!r} ({code or type(exc).__name__})"
            + (f": {hint}" if hint else "")
        ) from None
    except EndpointConnectionError:
        raise OutputError(f"cannot reach the S3 endpoint {s3.endpoint or 'aws'}") from None
    except (BotoCoreError, ValueError, OSError) as exc:
        raise OutputError(f"S3 upload failed: {redact_error(exc)}") from None


def _s3_code(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        seen = seen.__cause__ or seen.__context__
    match = re.search(r"\(([A-Za-z]+)\) when calling", str(exc))
    return match.group(1) if match else ""


# ---------------------------------------------------------------- all outputs


def deliver(tarball: Path, outputs: CaptureOutputs, extra_dirs: tuple[str, ...] = ()) -> list[OutputResult]:
    """Copy ``tarball`` to every configured output; one result per output, in a fixed order."""
    results: list[OutputResult] = []
    if outputs.host_path:
        results.append(copy_to_directory(tarball, outputs.host_path, "hostPath"))
    if outputs.pvc_path:
        results.append(copy_to_directory(tarball, outputs.pvc_path, "persistentVolumeClaim"))
    for directory in extra_dirs:
        results.append(copy_to_directory(tarball, directory, "directory"))
    if outputs.blob_sas_url_file:
        results.append(upload_blob(tarball, outputs.blob_sas_url_file))
    if outputs.s3:
        results.append(upload_s3(tarball, outputs.s3))
    return results
