"""Local object stores for upload/download tests: Azurite (Azure Blob) and a moto S3 server.

Each runs as a child process in its own session on a free loopback port and is always stopped.
Use ``with azurite_server(tmp_dir) as az:`` / ``with moto_s3_server() as s3:`` from a fixture.
(``tests/test_capture_workload.py`` still carries its own copies of these; new tests use this module.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

AZURITE_ACCOUNT = "devstoreaccount1"
# The emulator's documented, public development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started with ``start_new_session=True`` (npx runs node as a child)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def azurite_command() -> list[str]:
    exe = shutil.which("azurite-blob")
    if exe:
        return [exe]
    if shutil.which("npx"):
        return ["npx", "--yes", "azurite-blob"]
    pytest.fail("Azurite is not installed (scripts/setup.sh --dev installs it: npm install -g azurite)")


@dataclass
class Azurite:
    port: int
    container: str

    @property
    def container_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}/{self.container}"

    def sas_url(self, *, write: bool = True) -> str:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(
            AZURITE_ACCOUNT, self.container, account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(read=True, write=write, create=write, list=True),
            expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        )
        return f"{self.container_url}?{sas}"

    def upload(self, name: str, data: bytes) -> None:
        from azure.storage.blob import ContainerClient

        with ContainerClient.from_container_url(self.sas_url()) as client:
            client.upload_blob(name, data, overwrite=True)

    def read(self, name: str) -> bytes:
        from azure.storage.blob import ContainerClient

        with ContainerClient.from_container_url(self.sas_url()) as client:
            return bytes(client.download_blob(name).readall())

    def names(self) -> list[str]:
        from azure.storage.blob import ContainerClient

        with ContainerClient.from_container_url(self.sas_url()) as client:
            return [b.name for b in client.list_blobs()]


@contextlib.contextmanager
def azurite_server(location: Path, container: str = "captures") -> Iterator[Azurite]:
    from azure.storage.blob import BlobServiceClient

    port = free_port()
    args = [*azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
            "--silent", "--skipApiVersionCheck"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, proc, "azurite")
        conn = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
        with BlobServiceClient.from_connection_string(conn) as service:
            service.create_container(container)
        yield Azurite(port, container)
    finally:
        stop_group(proc)
        shutil.rmtree(location, ignore_errors=True)


@dataclass
class MotoS3:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )


@contextlib.contextmanager
def moto_s3_server(bucket: str = "captures") -> Iterator[MotoS3]:
    """moto_server with authentication on (after the three IAM calls that create our user), so a
    wrong key is refused as on real S3."""
    import boto3

    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, proc, "moto_server")
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name="us-east-1",
                                             aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="capture")
        key = iam.create_access_key(UserName="capture")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="capture", PolicyName="s3", PolicyDocument=json.dumps(policy))
        s3 = MotoS3(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        stop_group(proc)
