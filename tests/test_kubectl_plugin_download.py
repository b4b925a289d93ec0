"""``kubectl retina capture download``: tarballs read back from Azurite (blob, SAS URL from the generated
Secret or ``--blob-url``) and a moto S3 server (keys from the generated Secret), byte for byte; the hostPath
helper pod's spec (kmock has no exec, so the file transfer itself is not exercised here)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retina_otel.controller import kube
from retina_otel.controller.capture import LABEL_CAPTURE
from retina_otel.controller.kube import KubeClient
from retina_otel.kubectl_plugin import hostpath
from retina_otel.kubectl_plugin.cli import capture_file_matcher, main
from retina_otel.testing_k8s import EmulatedCluster
from tests.support.object_stores import Azurite, MotoS3, azurite_server, moto_s3_server

NS = "dl"
NODES = ("n1", "n2")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, KubeClient]]:
    with EmulatedCluster() as emu:
        c = KubeClient.from_options(api_url=emu.url)
        for name in NODES:
            c.create(kube.NODES, {"metadata": {"name": name, "labels": {"pool": "dl", "kubernetes.io/hostname": name}}})
        yield emu.url, c
        c.close()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with azurite_server(tmp_path_factory.mktemp("azurite")) as az:
        yield az


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    with moto_s3_server() as s3:
        yield s3


@pytest.fixture(autouse=True)
def _no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3 must use only what the Secret holds, never a developer's ~/.aws."""
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


def tarball(capture: str, node: str) -> tuple[str, bytes]:
    """A capture bundle as the workload names it, with distinct content per node."""
    name = f"{capture}-{node}-20250102030405UTC.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = ((f"{capture}-{node}.pcap", os.urandom(4096)), ("metadata.json", f'{{"node": "{node}"}}'.encode()))
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return name, buf.getvalue()


def create(url: str, name: str, *flags: str) -> None:
    # Only the output under test: no hostPath copy unless asked (Retina's CLI default would add 'retina').
    host_path = [] if "--host-path" in flags else ["--host-path", ""]
    rc = main(["--api-url", url, "capture", "create", "--name", name, "-n", NS, "--node-selectors", "pool=dl",
               "--duration", "10s", "--no-wait", *host_path, *flags])
    assert rc == 0


def download(url: str, name: str, out: Path, *flags: str) -> int:
    return main(["--api-url", url, "capture", "download", "--name", name, "-n", NS, "-o", str(out), *flags])


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}


def test_download_from_blob_via_the_generated_secret(
    cluster: tuple[str, KubeClient], azurite: Azurite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = cluster
    sas = azurite.sas_url()
    create(url, "dl-blob", "--blob-upload", sas)
    capsys.readouterr()
    uploaded = dict(tarball("dl-blob", node) for node in NODES)
    for name, data in uploaded.items():
        azurite.upload(name, data)
    # Another capture whose name starts with this one's, and a stray blob: neither is downloaded.
    azurite.upload(tarball("dl-blob-2", "n1")[0], b"not ours")
    azurite.upload("dl-blob-notes.txt", b"not a bundle")

    out = tmp_path / "out"
    assert download(url, "dl-blob", out) == 0
    printed = capsys.readouterr()
    assert files(out) == uploaded
    for name, data in files(out).items():  # a valid gzip tarball, as uploaded
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert sorted(tar.getnames()) == sorted([name.rsplit("-", 1)[0] + ".pcap", "metadata.json"])
    assert "downloaded 2 file(s)" in printed.out
    sig = sas.split("sig=", 1)[1].split("&", 1)[0]
    assert sig not in printed.out + printed.err  # the SAS token is never printed


def test_download_from_blob_with_blob_url_flag(
    cluster: tuple[str, KubeClient], azurite: Azurite, tmp_path: Path
) -> None:
    url, _ = cluster
    create(url, "dl-flag", "--blob-upload", "https://acct.blob.core.windows.net/caps?sv=x&sig=WRONG")
    name, data = tarball("dl-flag", "n2")
    azurite.upload(name, data)
    out = tmp_path / "out"
    assert download(url, "dl-flag", out, "--blob-url", azurite.sas_url(write=False)) == 0  # read+list suffice
    assert files(out) == {name: data}


def test_download_from_s3(
    cluster: tuple[str, KubeClient], moto_s3: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = cluster
    create(url, "dl-s3", "--s3-bucket", moto_s3.bucket, "--s3-endpoint", moto_s3.endpoint, "--s3-region",
           "us-east-1", "--s3-path", "retina/captures", "--s3-access-key-id", moto_s3.access_key,
           "--s3-secret-access-key", moto_s3.secret_key)
    capsys.readouterr()
    s3 = moto_s3.client()
    uploaded = dict(tarball("dl-s3", node) for node in NODES)
    for name, data in uploaded.items():
        s3.put_object(Bucket=moto_s3.bucket, Key=f"retina/captures/{name}", Body=data)
    s3.put_object(Bucket=moto_s3.bucket, Key=f"retina/captures/{tarball('dl-s3-old', 'n1')[0]}", Body=b"x")
    s3.put_object(Bucket=moto_s3.bucket, Key=f"elsewhere/{tarball('dl-s3', 'n1')[0]}", Body=b"x")

    out = tmp_path / "out"
    assert download(url, "dl-s3", out) == 0
    printed = capsys.readouterr()
    assert files(out) == uploaded
    assert moto_s3.secret_key not in printed.out + printed.err


def test_download_from_s3_with_a_wrong_key_fails_cleanly(
    cluster: tuple[str, KubeClient], moto_s3: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = cluster
    create(url, "dl-s3-bad", "--s3-bucket", moto_s3.bucket, "--s3-endpoint", moto_s3.endpoint, "--s3-region",
           "us-east-1", "--s3-access-key-id", moto_s3.access_key, "--s3-secret-access-key", "WRONG-SECRET-KEY")
    capsys.readouterr()
    assert download(url, "dl-s3-bad", tmp_path / "out") == 1
    printed = capsys.readouterr()
    assert "S3 download failed" in printed.err
    assert "WRONG-SECRET-KEY" not in printed.out + printed.err
    assert files(tmp_path / "out") == {}


def test_download_without_jobs(cluster: tuple[str, KubeClient], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = cluster
    assert download(url, "never-created", tmp_path / "out") == 1
    assert "no jobs for capture dl/never-created" in capsys.readouterr().err


def test_capture_file_matcher() -> None:
    match = capture_file_matcher("cap", ["n1", "n2"])
    assert match("cap-n1-20250101000000UTC.tar.gz") and match("retina/captures/cap-n2-20250101000000UTC.tar.gz")
    assert not match("cap-2-n1-20250101000000UTC.tar.gz")  # another capture
    assert not match("cap-n3-20250101000000UTC.tar.gz")  # not one of this capture's nodes
    assert not match("cap-n1-20250101000000UTC.txt")
    assert capture_file_matcher("cap")("cap-any-1UTC.tar.gz")


# -- hostPath: the helper pod ------------------------------------------------------------------------


def test_helper_pod_spec() -> None:
    pod = hostpath.helper_pod(NS, "cap", "node-1", "/var/log/retina/captures/dbg", "busybox:1.36")
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["namespace"] == NS and meta["name"].endswith("-download") and len(meta["name"]) <= 63
    assert meta["labels"][LABEL_CAPTURE] == "cap" and meta["labels"]["retina.sh/role"] == "download"
    assert spec["nodeName"] == "node-1" and spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["tolerations"] == [{"operator": "Exists"}]  # reaches tainted nodes like the capture Job
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert "hostNetwork" not in spec and "hostPID" not in spec
    (container,) = spec["containers"]
    assert container["image"] == "busybox:1.36" and container["command"][0] == "sleep"
    sc = container["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}
    assert container["volumeMounts"] == [{"name": "captures", "mountPath": hostpath.MOUNT, "readOnly": True}]
    assert spec["volumes"] == [{"name": "captures", "hostPath": {"path": "/var/log/retina/captures/dbg",
                                                                 "type": "Directory"}}]
    long = hostpath.helper_pod(NS, "c" * 60, "node-with-a-very-long-name-" + "x" * 40, "/d", "img")
    assert len(long["metadata"]["name"]) <= 63


def test_helper_pod_validates_as_a_pod() -> None:
    import kubernetes_validate

    pod = hostpath.helper_pod(NS, "cap", "node-1", "/var/log/retina/captures/dbg", "busybox:1.36")
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_helper_pod_is_removed_when_it_never_runs(cluster: tuple[str, KubeClient], tmp_path: Path) -> None:
    """kmock never starts pods: the wait times out and the helper pod is deleted anyway."""
    _, c = cluster
    with pytest.raises(TimeoutError, match="not running"):
        hostpath.download_host_path(c, NS, "hp", "n1", "/var/log/retina/captures/x", str(tmp_path), "busybox",
                                    timeout=1.0)
    assert [p for p in c.list(kube.PODS, NS) if p["metadata"]["labels"].get(LABEL_CAPTURE) == "hp"] == []


def test_download_falls_back_to_host_path_per_node(
    cluster: tuple[str, KubeClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = cluster
    create(url, "dl-hp", "--host-path", "dbg")
    calls: list[tuple[Any, ...]] = []

    def fake(client: KubeClient, namespace: str, capture: str, node: str, host_dir: str, dest: str,
             image: str) -> int:
        calls.append((namespace, capture, node, host_dir, image))
        return 1

    monkeypatch.setattr(hostpath, "download_host_path", fake)
    assert download(url, "dl-hp", tmp_path / "out", "--helper-image", "busybox:stable") == 0
    assert calls == [(NS, "dl-hp", node, "/var/log/retina/captures/dbg", "busybox:stable") for node in NODES]


# -- --all / --all-namespaces ---------------------------------------------------------------------------


def test_download_all_and_all_namespaces(moto_s3: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every capture of a namespace (--all) or of the cluster (-A), each into its own directory."""
    with EmulatedCluster() as emu:
        c = KubeClient.from_options(api_url=emu.url)
        c.create(kube.NODES, {"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}})
        s3 = moto_s3.client()
        uploaded: dict[tuple[str, str], dict[str, bytes]] = {}
        for ns, name in (("team-a", "cap-a1"), ("team-a", "cap-a2"), ("team-b", "cap-b1")):
            assert main(["--api-url", emu.url, "capture", "create", "--name", name, "-n", ns, "--node-names", "n1",
                         "--s3-bucket", moto_s3.bucket, "--s3-endpoint", moto_s3.endpoint, "--s3-region",
                         "us-east-1", "--s3-path", f"all/{ns}", "--s3-access-key-id", moto_s3.access_key,
                         "--s3-secret-access-key", moto_s3.secret_key, "--host-path", ""]) == 0
            file_name, data = tarball(name, "n1")
            s3.put_object(Bucket=moto_s3.bucket, Key=f"all/{ns}/{file_name}", Body=data)
            uploaded[(ns, name)] = {file_name: data}
        capsys.readouterr()

        out = tmp_path / "ns"
        assert main(["--api-url", emu.url, "capture", "download", "--all", "-n", "team-a", "-o", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["cap-a1", "cap-a2"]
        for name in ("cap-a1", "cap-a2"):
            assert files(out / name) == uploaded[("team-a", name)]

        out = tmp_path / "everywhere"
        assert main(["--api-url", emu.url, "capture", "download", "-A", "-o", str(out)]) == 0
        for (ns, name), expected in uploaded.items():
            assert files(out / ns / name) == expected
        printed = capsys.readouterr()
        assert "downloaded 3 file(s) of 3 capture(s)" in printed.out
        assert moto_s3.secret_key not in printed.out + printed.err

        # One of --name, --all, --all-namespaces.
        assert main(["--api-url", emu.url, "capture", "download", "-o", str(out)]) == 2
        assert main(["--api-url", emu.url, "capture", "download", "--name", "x", "--all"]) == 2
        assert main(["--api-url", emu.url, "capture", "download", "--all", "-n", "empty"]) == 1
        c.close()
