"""kubectl-retina against kmock's KubernetesEmulator, without the operator."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from retina_otel.controller import kube
from retina_otel.controller.capture import LABEL_CAPTURE
from retina_otel.controller.kube import KubeClient
from retina_otel.kubectl_plugin.cli import main
from retina_otel.testing import wait_for
from retina_otel.testing_k8s import EmulatedCluster

NS = "netdebug"


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[str, KubeClient]]:
    with EmulatedCluster() as emu:
        c = KubeClient.from_options(api_url=emu.url)
        for name, labels in [("n1", {"pool": "a"}), ("n2", {"pool": "a"}), ("n3", {"pool": "b"})]:
            c.create(kube.NODES, {"metadata": {"name": name, "labels": {**labels, "kubernetes.io/hostname": name}}})
        c.create(kube.PODS, {"metadata": {"name": "api-1", "namespace": NS, "labels": {"app": "api"}},
                             "spec": {"nodeName": "n3", "containers": [{"name": "c", "image": "x"}]},
                             "status": {"phase": "Running", "podIP": "198.18.1.5"}}, NS)
        yield emu.url, c
        c.close()


def _jobs(c: KubeClient, name: str) -> list[dict]:
    return c.list(kube.JOBS, NS, labels={LABEL_CAPTURE: name})


def test_create_list_delete_no_wait(env: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = env
    sas = "https://acct.blob.core.windows.net/caps?sv=2024&sig=SECRETSIG"
    rc = main(["--api-url", url, "capture", "create", "--name", "cap1", "-n", NS, "--node-selectors", "pool=a",
               "--duration", "10s", "--host-path", "dbg", "--blob-upload", sas, "--include-filter",
               "198.18.0.1:443,*:53", "--exclude-filter", "198.18.0.9", "--no-wait"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "SECRETSIG" not in out.out + out.err
    jobs = _jobs(c, "cap1")
    assert sorted(j["spec"]["template"]["spec"]["nodeName"] for j in jobs) == ["n1", "n2"]
    spec = json.loads(next(e["value"] for e in jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
                           if e["name"] == "RETINA_CAPTURE_SPEC"))
    assert spec["durationSeconds"] == 10.0 and spec["maxCaptureSizeMB"] == 100
    assert spec["filter"]["include"] == ["198.18.0.1:443", "*:53"]
    assert "SECRETSIG" not in json.dumps(jobs)
    secret = c.get(kube.SECRETS, "cap1-blob-upload", NS)
    assert base64.b64decode(secret["data"]["blob-upload-url"]).decode() == sas

    assert main(["--api-url", url, "capture", "list", "-n", NS]) == 0
    listing = capsys.readouterr().out
    assert "cap1" in listing and "n1,n2" in listing

    assert main(["--api-url", url, "capture", "delete", "--name", "cap1", "-n", NS]) == 0
    assert _jobs(c, "cap1") == []
    assert c.get_or_none(kube.SECRETS, "cap1-blob-upload", NS) is None


def test_pod_selector_and_s3(env: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = env
    rc = main(["--api-url", url, "capture", "create", "--name", "cap2", "-n", NS, "--pod-selectors", "app=api",
               "--s3-bucket", "caps", "--s3-endpoint", "http://127.0.0.1:9000", "--s3-access-key-id", "AKIDX",
               "--s3-secret-access-key", "VERYSECRET", "--no-wait"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "VERYSECRET" not in out.out + out.err
    (job,) = _jobs(c, "cap2")
    assert job["spec"]["template"]["spec"]["nodeName"] == "n3"
    assert "VERYSECRET" not in json.dumps(job) and "198.18.1.5" in json.dumps(job)
    assert main(["--api-url", url, "capture", "delete", "--name", "cap2", "-n", NS]) == 0


def test_wait_until_jobs_finish(env: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = env
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(main([
        "--api-url", url, "capture", "create", "--name", "cap3", "-n", NS, "--node-names", "n3",
        "--node-selectors", "pool=b", "--host-path", "x", "--wait", "--poll-interval", "0.1",
        "--wait-timeout", "30"])))
    t.start()
    try:
        assert wait_for(lambda: len(_jobs(c, "cap3")) == 1, 10)
        job = _jobs(c, "cap3")[0]
        c.patch_status(kube.JOBS, job["metadata"]["name"], {"succeeded": 1}, NS)
    finally:
        t.join(30)
    assert result == [0]
    assert "1 completed" in capsys.readouterr().out
    assert _jobs(c, "cap3") == []  # cleaned up after completion


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--host-path", "/etc"], "is absolute"),
        (["--host-path", "a/../../etc"], "'..'"),
        (["--host-path", "x", "--pod-selectors", "app=api"], "exactly one of"),
        (["--host-path", "x", "--verbosity", "loud"], "captureOption.verbosity"),
        (["--host-path", "x", "--timestamp-format", "iso"], "captureOption.timestampFormat"),
        (["--host-path", "x", "--print-data", "binary"], "captureOption.printDataFormat"),
        (["--host-path", "x", "--source-ips", "198.18.0.300"], "not an IP address"),
        (["--cleanup-after-upload"], "cleanUpAfterUpload needs a remote output"),
        (["--host-path", ""], "outputConfiguration needs at least one"),
        (["--host-path-base-dir", "captures"], "must be an absolute directory"),
        (["--host-path", "x", "--include-filter", "not-an-ip:80"], "not an IP address"),
    ],
)
def test_invalid_flags_rejected_before_anything_is_created(
    env: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    url, c = env
    rc = main(["--api-url", url, "capture", "create", "--name", "bad", "-n", NS, "--node-selectors", "pool=a",
               *flags])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert _jobs(c, "bad") == []


def test_job_num_limit(env: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = env
    rc = main(["--api-url", url, "capture", "create", "--name", "lim", "-n", NS, "--node-selectors", "pool=a",
               "--host-path", "x", "--job-num-limit", "1"])
    assert rc == 1
    assert "ExceedJobNumLimit" in capsys.readouterr().err
    assert _jobs(c, "lim") == []


def test_kubectl_plugin_list_finds_plugin() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (Debian package) is part of the test environment"
    bindir = Path(sys.executable).parent
    assert (bindir / "kubectl-retina").exists()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([kubectl, "plugin", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert "kubectl-retina" in proc.stdout, proc.stdout + proc.stderr
    help_out = subprocess.run([str(bindir / "kubectl-retina"), "capture", "create", "--help"],
                              capture_output=True, text=True, timeout=30)
    assert help_out.returncode == 0 and "--pod-selectors" in help_out.stdout
