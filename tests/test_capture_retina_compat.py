"""Retina's Capture manifests and ``kubectl retina capture create`` flags, unchanged, against kmock.

The manifests are the examples of Retina's documentation (docs/04-Captures/03-crd.md and
docs/05-Concepts/CRDs/Capture.md in microsoft/retina), written as they appear there (only the
``<secret-name>`` placeholder is given a real name). Each is checked against this project's CRD schema,
then goes through the operator's own code path (plan_jobs/create_jobs/refresh_capture) against kmock, and
the Job it produces is compared with what Retina's Job means: nodes, duration and size limits, packet
size, file count, filters, pod IPs, output location. Every tcpdump flag of ``kubectl retina capture
create`` is followed from the command line through the Capture, the Job's RETINA_CAPTURE_SPEC and the
workload's spec to tcpdump's argv (a list, the filter one item after ``--``).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from retina_otel.capture.filters import build_filter
from retina_otel.capture.spec import CaptureJobSpec as WorkloadSpec
from retina_otel.capture.tcpdump import MB, TcpdumpSettings, run_tcpdump, tcpdump_args
from retina_otel.controller import kube
from retina_otel.controller.capture import LABEL_CAPTURE, CaptureFailure, CaptureSettings, create_jobs, plan_jobs
from retina_otel.controller.handlers import refresh_capture
from retina_otel.controller.kube import KubeClient
from retina_otel.crds import CRDS
from retina_otel.crds.capturejob import TcpdumpFlags
from retina_otel.kubectl_plugin.cli import _own_secrets, build_parser, main
from retina_otel.testing_k8s import EmulatedCluster

# --- Retina's documented manifests (docs/04-Captures/03-crd.md, docs/05-Concepts/CRDs/Capture.md) ---------

RETINA_DOC_MANIFESTS = """
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: example-node-selectors
spec:
  captureConfiguration:
    captureOption:
      duration: "5s"
      maxCaptureSize: 100
      packetSize: 1500
    captureTarget:
      nodeSelector:
        matchLabels:
          kubernetes.io/os: linux
  outputConfiguration:
    hostPath: example-capture
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: example-include-exclude-filters
spec:
  captureConfiguration:
    captureOption:
      duration: "5s"
      maxCaptureSize: 100
      packetSize: 1500
    captureTarget:
      nodeSelector:
        matchLabels:
          kubernetes.io/os: linux
    filters:
      include:
        - 10.224.0.42:80
        - 10.224.0.33:8080
      exclude:
        - 10.224.0.26:80
        - 10.224.0.34:8080
  outputConfiguration:
    hostPath: example-capture
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: example-source-destination-ip
spec:
  captureConfiguration:
    captureOption:
      duration: "5s"
      maxCaptureSize: 100
      sourceIPs:
        - 10.224.0.42
      destinationIPs:
        - 10.224.0.33
        - 10.224.0.34
    captureTarget:
      nodeSelector:
        matchLabels:
          kubernetes.io/os: linux
  outputConfiguration:
    hostPath: example-capture
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: example-pod-names
  namespace: myapp
spec:
  captureConfiguration:
    captureOption:
      duration: "60s"
      maxCaptureSize: 100
    captureTarget:
      podNames:
        - my-app-pod-abc123
  outputConfiguration:
    hostPath: example-capture
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: example-multiple-pod-names
  namespace: myapp
spec:
  captureConfiguration:
    captureOption:
      duration: "30s"
      maxCaptureSize: 100
    captureTarget:
      podNames:
        - my-app-pod-abc123
        - my-app-pod-def456
  outputConfiguration:
    hostPath: example-capture
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: example-rotating-capture
spec:
  captureConfiguration:
    captureOption:
      # Per-file size limit in MB
      maxCaptureSize: 100
      # Number of rotating files (oldest overwritten when limit reached)
      # Total buffer: 100MB x 10 = 1GB of recent traffic
      fileCount: 10
    captureTarget:
      nodeSelector:
        matchLabels:
          kubernetes.io/os: linux
  outputConfiguration:
    hostPath: /mnt/retina/captures
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: my-capture
spec:
  captureConfiguration:
    captureTarget:
      nodeSelector:
        matchLabels:
          kubernetes.io/os: linux
  outputConfiguration:
    blobUpload: "capture-blob-sas"
  cleanUpAfterUpload: true
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: example-capture
spec:
  captureConfiguration:
    captureOption:
      duration: "30s"
      maxCaptureSize: 100
      packetSize: 1500
    captureTarget:
      namespaceSelector:
        matchLabels:
          app: target-app
  outputConfiguration:
    hostPath: /captures
    blobUpload: blob-sas-url
    s3Upload:
      bucket: retina-bucket
      region: ap-northeast-2
      path: retina/captures
      secretName: capture-s3-upload-secret
"""

# Two of Retina's samples/capture/ files (node-s3upload-minio.yaml without its placeholder Secret;
# podblobupload.yaml, renamed so both fit one dict).
RETINA_SAMPLES = """
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: capture-node-blobupload
spec:
  captureConfiguration:
    captureOption:
      duration: 10m
    captureTarget:
      nodeSelector:
        matchExpressions:
          - {
              key: kubernetes.io/hostname,
              operator: In,
              values:
                [
                  aks-nodepool1-11396069-vmss000001,
                  aks-nodepool1-11396069-vmss000000,
                ],
            }
  outputConfiguration:
    hostPath: "retina"
    s3Upload:
      bucket: retina-bucket
      endpoint: https://play.min.io:9000
      path: retina/captures
      secretName: capture-s3-upload-secret
---
apiVersion: retina.sh/v1alpha1
kind: Capture
metadata:
  name: sample-capture-pod-blobupload
spec:
  captureConfiguration:
    captureOption:
      duration: 10m
    captureTarget:
      podSelector:
        matchLabels:
          k8s-app: cloud-node-manager
      namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
  outputConfiguration:
    # the artifact will be copied to hostpath
    # and uploaded to azure storage account
    hostPath: "/tmp/retina"
    blobUpload: blobsassecret
"""

MANIFESTS = {m["metadata"]["name"]: m for m in yaml.safe_load_all(RETINA_DOC_MANIFESTS + "---" + RETINA_SAMPLES)}
BASE = "/var/log/retina/captures"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, KubeClient]]:
    with EmulatedCluster() as emu:
        c = KubeClient.from_options(api_url=emu.url)
        for name, os_ in (("n1", "linux"), ("n2", "linux"), ("w1", "windows")):
            c.create(kube.NODES, {"metadata": {"name": name, "labels": {
                "kubernetes.io/os": os_, "kubernetes.io/hostname": name}}})
        for name in ("aks-nodepool1-11396069-vmss000000", "aks-nodepool1-11396069-vmss000001"):  # the samples'
            c.create(kube.NODES, {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
        for ns in ("default", "myapp"):
            c.create(kube.NAMESPACES, {"metadata": {"name": ns}})
        for name, node, ip in (("my-app-pod-abc123", "n1", "198.18.5.1"), ("my-app-pod-def456", "n2", "198.18.5.2")):
            c.create(kube.PODS, {"metadata": {"name": name, "namespace": "myapp", "labels": {"app": "my-app"}},
                                 "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
                                 "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}, "myapp")
        c.create(kube.SECRETS, {"metadata": {"name": "capture-blob-sas", "namespace": "default"},
                                "data": {"blob-upload-url": "aHR0cHM6Ly94"}}, "default")
        c.create(kube.SECRETS, {"metadata": {"name": "capture-s3-upload-secret", "namespace": "default"},
                                "data": {"s3-access-key-id": "QQ==", "s3-secret-access-key": "Qg=="}}, "default")
        yield emu.url, c
        c.close()


def submit(c: KubeClient, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """What the operator does with a new Capture (handlers.reconcile_capture): plan, then create the Jobs."""
    ns = manifest["metadata"].get("namespace", "default")
    created = c.create(kube.CAPTURES, {**manifest, "metadata": {**manifest["metadata"], "namespace": ns}}, ns)
    return create_jobs(c, plan_jobs(c, created, CaptureSettings(host_path_base=BASE)))


def job_view(job: dict[str, Any]) -> tuple[str, WorkloadSpec, dict[str, Any]]:
    """(node, what the workload will run, the Job's volumes by name)."""
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    return pod["nodeName"], WorkloadSpec.from_json(env["RETINA_CAPTURE_SPEC"]), {v["name"]: v for v in pod["volumes"]}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_retina_doc_manifests_pass_this_crd_schema(name: str) -> None:
    (crd,) = [c for c in CRDS if c["spec"]["names"]["kind"] == "Capture"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(MANIFESTS[name], schema)


def test_node_selector_manifest(cluster: tuple[str, KubeClient]) -> None:
    _, c = cluster
    jobs = submit(c, MANIFESTS["example-node-selectors"])
    assert sorted(job_view(j)[0] for j in jobs) == ["n1", "n2"]  # kubernetes.io/os=linux only
    for job in jobs:
        _, spec, vols = job_view(job)
        assert (spec.duration, spec.max_capture_size_mb, spec.packet_size) == (5.0, 100, 1500)
        assert vols["hostpath"]["hostPath"]["path"] == f"{BASE}/example-capture"
        assert spec.include_metadata is True  # Retina's default
        assert build_filter(spec) == ""  # everything, on every interface
        assert spec.interfaces == ()


def test_include_exclude_manifest(cluster: tuple[str, KubeClient]) -> None:
    _, c = cluster
    _, spec, _ = job_view(submit(c, MANIFESTS["example-include-exclude-filters"])[0])
    assert build_filter(spec) == (
        "((host 10.224.0.42 and port 80) or (host 10.224.0.33 and port 8080)) and "
        "not ((host 10.224.0.26 and port 80) or (host 10.224.0.34 and port 8080))"
    )


def test_source_destination_manifest(cluster: tuple[str, KubeClient]) -> None:
    _, c = cluster
    _, spec, _ = job_view(submit(c, MANIFESTS["example-source-destination-ip"])[0])
    # Source 10.224.0.42 and destination either of the two, as Retina's page explains.
    assert build_filter(spec) == "(src host 10.224.0.42) and (dst host 10.224.0.33 or dst host 10.224.0.34)"


def test_pod_name_manifests(cluster: tuple[str, KubeClient]) -> None:
    _, c = cluster
    (job,) = submit(c, MANIFESTS["example-pod-names"])
    node, spec, _ = job_view(job)
    assert job["metadata"]["namespace"] == "myapp"
    assert (node, spec.pod_ips, spec.duration) == ("n1", ("198.18.5.1",), 60.0)
    jobs = submit(c, MANIFESTS["example-multiple-pod-names"])
    assert sorted((job_view(j)[0], job_view(j)[1].pod_ips) for j in jobs) == [
        ("n1", ("198.18.5.1",)), ("n2", ("198.18.5.2",))]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        # Retina's operator refuses these too: hostPath must be a relative subpath, and a namespaceSelector
        # needs a podSelector ("Neither NodeSelector nor NamespaceSelector&PodSelector is set").
        ("example-rotating-capture", "outputConfiguration.hostPath '/mnt/retina/captures' is absolute"),
        ("example-capture", "captureTarget needs exactly one of"),
        ("sample-capture-pod-blobupload", "outputConfiguration.hostPath '/tmp/retina' is absolute"),
    ],
)
def test_manifests_retina_also_refuses(cluster: tuple[str, KubeClient], name: str, words: str) -> None:
    _, c = cluster
    with pytest.raises(CaptureFailure) as info:
        submit(c, MANIFESTS[name])
    assert info.value.reason == "InvalidSpec" and words in info.value.message


def test_rotating_capture_meaning_with_a_relative_path(cluster: tuple[str, KubeClient]) -> None:
    """The rotating example as current Retina accepts it (relative hostPath): no duration, 10 files of 10 MB
    each within the 100 MB limit... as this project reads fileCount (see docs/crds.md)."""
    _, c = cluster
    manifest = json.loads(json.dumps(MANIFESTS["example-rotating-capture"]))
    manifest["metadata"]["name"] = "rotating-relative"
    manifest["spec"]["outputConfiguration"]["hostPath"] = "mnt/retina/captures"
    _, spec, vols = job_view(submit(c, manifest)[0])
    assert (spec.duration, spec.max_capture_size_mb, spec.file_count) == (None, 100, 10)
    assert vols["hostpath"]["hostPath"]["path"] == f"{BASE}/mnt/retina/captures"


def test_clean_up_after_upload_manifest(cluster: tuple[str, KubeClient]) -> None:
    """No captureOption at all: Retina's maxCaptureSize default (100 MB) stops it; once every Job succeeded
    the Capture is deleted (the operator's delete handler then removes Jobs and generated Secrets)."""
    _, c = cluster
    jobs = submit(c, MANIFESTS["my-capture"])
    assert sorted(job_view(j)[0] for j in jobs) == ["n1", "n2"]
    _, spec, vols = job_view(jobs[0])
    assert (spec.duration, spec.max_capture_size_mb) == (None, 100)
    assert vols["blob-secret"]["secret"]["secretName"] == "capture-blob-sas"
    # One Job done: nothing is removed yet.
    done = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    c.patch_status(kube.JOBS, jobs[0]["metadata"]["name"], done, "default")
    refresh_capture(c, "default", "my-capture")
    assert c.get_or_none(kube.CAPTURES, "my-capture", "default") is not None
    c.patch_status(kube.JOBS, jobs[1]["metadata"]["name"], done, "default")
    refresh_capture(c, "default", "my-capture")
    assert c.get_or_none(kube.CAPTURES, "my-capture", "default") is None


def test_clean_up_after_upload_keeps_everything_when_a_job_failed(cluster: tuple[str, KubeClient]) -> None:
    _, c = cluster
    manifest = json.loads(json.dumps(MANIFESTS["my-capture"]))
    manifest["metadata"]["name"] = "keep-on-failure"
    jobs = submit(c, manifest)
    c.patch_status(kube.JOBS, jobs[0]["metadata"]["name"], {"succeeded": 1}, "default")
    c.patch_status(kube.JOBS, jobs[1]["metadata"]["name"], {"failed": 1}, "default")
    refresh_capture(c, "default", "keep-on-failure")
    assert c.get_or_none(kube.CAPTURES, "keep-on-failure", "default") is not None


# --- every Retina flag of `kubectl retina capture create` reaches tcpdump's argv ----------------------------

FLAG_CASES: list[tuple[list[str], str, Any, list[str]]] = [
    (["--no-resolve-dns"], "noResolveDNS", True, ["-n"]),
    (["--no-resolve-port"], "noResolvePort", True, ["-nn"]),
    (["--print-link-header"], "printLinkHeader", True, ["-e"]),
    (["--quiet-output"], "quietOutput", True, ["-q"]),
    (["--absolute-seq"], "absoluteSeq", True, ["-S"]),
    (["--dont-verify-checksum"], "dontVerifyChecksum", True, ["-K"]),
    (["--no-promiscuous"], "noPromiscuous", True, ["-p"]),
    (["--packet-buffered"], "packetBuffered", True, ["-U"]),
    (["--immediate-mode"], "immediateMode", True, ["--immediate-mode"]),
    (["--verbosity", "verbose"], "verbosity", "verbose", ["-v"]),
    (["--verbosity", "extra"], "verbosity", "extra", ["-vv"]),
    (["--verbosity", "max"], "verbosity", "max", ["-vvv"]),
    (["--timestamp-format", "none"], "timestampFormat", "none", ["-t"]),
    (["--timestamp-format", "unformatted"], "timestampFormat", "unformatted", ["-tt"]),
    (["--timestamp-format", "delta"], "timestampFormat", "delta", ["-ttt"]),
    (["--timestamp-format", "date"], "timestampFormat", "date", ["-tttt"]),
    (["--timestamp-format", "delta-since-first"], "timestampFormat", "delta-since-first", ["-ttttt"]),
    (["--print-data", "hex"], "printDataFormat", "hex", ["-x"]),
    (["--print-data", "hex-with-link"], "printDataFormat", "hex-with-link", ["-xx"]),
    (["--print-data", "ascii"], "printDataFormat", "ascii", ["-A"]),
    (["--print-data", "ascii-with-link"], "printDataFormat", "ascii-with-link", ["-AA"]),
    # This project's earlier flag names, kept as aliases.
    (["--no-resolve"], "noResolvePort", True, ["-nn"]),
    (["--verbose-dump"], "verbosity", "verbose", ["-v"]),
    (["--link-header"], "printLinkHeader", True, ["-e"]),
    (["--quiet-dump"], "quietOutput", True, ["-q"]),
]


def created_job(url: str, c: KubeClient, name: str, *flags: str) -> dict[str, Any]:
    rc = main(["--api-url", url, "capture", "create", "--name", name, "-n", "default", "--node-names", "n1",
               "--host-path", "flags", *flags])
    assert rc == 0
    (job,) = c.list(kube.JOBS, "default", labels={LABEL_CAPTURE: name})
    return job


def argv_of(job: dict[str, Any]) -> list[str]:
    _, spec, _ = job_view(job)
    settings = TcpdumpSettings(expression=build_filter(spec), options=tuple(spec.tcpdump.args()))
    return tcpdump_args(settings, "any", Path("/retina/capture/work/x.pcap"))


@pytest.mark.parametrize(("flags", "field", "value", "options"), FLAG_CASES, ids=[" ".join(f[0]) for f in FLAG_CASES])
def test_each_flag_reaches_tcpdump(cluster: tuple[str, KubeClient], flags: list[str], field: str, value: Any,
                                   options: list[str]) -> None:
    url, c = cluster
    name = "flag-" + "-".join(f.strip("-") for f in flags)[:40]
    job = created_job(url, c, name, *flags)
    contract = json.loads(next(e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
                               if e["name"] == "RETINA_CAPTURE_SPEC"))
    assert {k: v for k, v in contract["tcpdump"].items() if v} == {field: value}  # under Retina's field name
    argv = argv_of(job)
    assert all(isinstance(a, str) for a in argv) and argv[0] == "tcpdump"
    for option in options:
        assert option in argv, argv


def test_source_and_destination_ips_reach_the_filter(cluster: tuple[str, KubeClient]) -> None:
    url, c = cluster
    job = created_job(url, c, "ips", "--source-ips", "198.18.0.1,198.18.2.0/24",
                      "--destination-ips", "2001:db8::1", "--pcap-filter", "tcp")
    argv = argv_of(job)
    assert argv[-2:] == ["--", "(src host 198.18.0.1 or src net 198.18.2.0/24) and (dst host 2001:db8::1) and (tcp)"]


def test_cleanup_after_upload_flag(cluster: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = cluster
    job = created_job(url, c, "cleanup", "--blob-upload", "https://acct.blob.core.windows.net/c?sig=x",
                      "--cleanup-after-upload")
    assert job["spec"]["ttlSecondsAfterFinished"] == 300  # --no-wait: Kubernetes removes the finished Jobs
    (secret,) = c.list(kube.SECRETS, "default", labels={LABEL_CAPTURE: "cleanup"})
    # kmock assigns no uids, so the owner references are checked with the Job as a real server returns it.
    _own_secrets(c, "default", [secret["metadata"]["name"]], [{"metadata": {**job["metadata"], "uid": "u-1"}}])
    owners = c.get(kube.SECRETS, secret["metadata"]["name"], "default")["metadata"]["ownerReferences"]
    assert owners == [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"], "uid": "u-1"}]
    capsys.readouterr()
    assert main(["--api-url", url, "capture", "create", "--name", "cleanup-hp", "-n", "default", "--node-names",
                 "n1", "--host-path", "x", "--cleanup-after-upload"]) == 2
    assert "cleanUpAfterUpload needs a remote output" in capsys.readouterr().err


def test_debug_flag_uses_retina_agent_image(cluster: tuple[str, KubeClient], monkeypatch: pytest.MonkeyPatch) -> None:
    url, c = cluster
    monkeypatch.setenv("RETINA_AGENT_IMAGE", "registry.example/retina-otel:debug")
    job = created_job(url, c, "dbg", "--debug")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/retina-otel:debug"
    # A Go bool flag, as in Retina: --debug=true / --debug=false.
    job = created_job(url, c, "dbg-true", "--debug=true")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/retina-otel:debug"
    job = created_job(url, c, "dbg-false", "--debug=false")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] != "registry.example/retina-otel:debug"


def test_legacy_tcpdump_object_is_an_alias() -> None:
    """``captureOption.tcpdump`` (this project's earlier names) still works; Retina's fields win."""
    from retina_otel.crds.models import CaptureOption

    opt = CaptureOption.model_validate({"tcpdump": {"noNameResolution": True, "verbose": True, "quiet": False},
                                        "verbosity": "max"})
    assert TcpdumpFlags.model_validate(opt.tcpdump_flags()).args() == ["-nn", "-vvv"]
    # Jobs written by an earlier operator (old key names in the contract) still run with the same options.
    old = TcpdumpFlags.model_validate({"noNameResolution": True, "linkLevelHeader": True, "verbose": False})
    assert old.args() == ["-nn", "-e"]


@pytest.mark.kernel
def test_tcpdump_accepts_every_option_together(tmp_path: Path) -> None:
    """The real tcpdump starts with all of Retina's switches at once (on loopback, for a moment)."""
    tcpdump = shutil.which("tcpdump")
    assert tcpdump, "tcpdump is part of the test environment"
    flags = TcpdumpFlags.model_validate({
        "noResolvePort": True, "printLinkHeader": True, "quietOutput": True, "absoluteSeq": True,
        "dontVerifyChecksum": True, "noPromiscuous": True, "packetBuffered": True, "immediateMode": True,
        "verbosity": "max", "timestampFormat": "delta-since-first", "printDataFormat": "ascii-with-link"})
    settings = TcpdumpSettings(interfaces=("lo",), expression="udp port 9", duration=0.5, options=tuple(flags.args()),
                               tcpdump=tcpdump)
    run = run_tcpdump(settings, tmp_path, "all-options", stop=threading.Event())
    assert run.started and run.error is None, run.error
    assert run.stop_reason == "duration"
    for option in flags.args():
        assert option in run.commands[0]


def test_retina_cli_defaults(cluster: tuple[str, KubeClient]) -> None:
    """`kubectl retina capture create` with no target and no output: Retina's defaults (Linux nodes, 1 minute,
    100 MB, into <base>/retina on each node); another target replaces the default node selector."""
    url, c = cluster
    assert main(["--api-url", url, "capture", "create", "--name", "defaults", "-n", "default"]) == 0
    jobs = c.list(kube.JOBS, "default", labels={LABEL_CAPTURE: "defaults"})
    assert sorted(job_view(j)[0] for j in jobs) == ["n1", "n2"]  # kubernetes.io/os=linux
    _, spec, vols = job_view(jobs[0])
    assert (spec.duration, spec.max_capture_size_mb, spec.include_metadata) == (60.0, 100, True)
    assert vols["hostpath"]["hostPath"]["path"] == f"{BASE}/retina"
    assert main(["--api-url", url, "capture", "create", "--name", "by-pod", "-n", "myapp",
                 "--pod-names", "my-app-pod-def456", "--host-path-base-dir", "/data/caps"]) == 0
    (job,) = c.list(kube.JOBS, "myapp", labels={LABEL_CAPTURE: "by-pod"})
    node, spec, vols = job_view(job)
    assert (node, spec.pod_ips) == ("n2", ("198.18.5.2",))
    assert vols["hostpath"]["hostPath"]["path"] == "/data/caps/retina"


def test_tcpdump_filter_and_pcap_filter_flags(cluster: tuple[str, KubeClient]) -> None:
    url, c = cluster
    job = created_job(url, c, "two-filters", "--tcpdump-filter", "udp port 53", "--pcap-filter", "host 198.18.0.9")
    assert argv_of(job)[-2:] == ["--", "((udp port 53) and (host 198.18.0.9))"]


def test_minio_sample(cluster: tuple[str, KubeClient]) -> None:
    """samples/capture/node-s3upload-minio.yaml: two nodes by hostname, 10 minutes, hostPath and S3."""
    _, c = cluster
    jobs = submit(c, MANIFESTS["capture-node-blobupload"])
    assert sorted(job_view(j)[0] for j in jobs) == ["aks-nodepool1-11396069-vmss000000",
                                                    "aks-nodepool1-11396069-vmss000001"]
    _, spec, vols = job_view(jobs[0])
    assert (spec.duration, spec.max_capture_size_mb) == (600.0, 100)
    assert vols["hostpath"]["hostPath"]["path"] == f"{BASE}/retina"
    assert vols["s3-secret"]["secret"]["secretName"] == "capture-s3-upload-secret"
    assert spec.outputs.s3 is not None
    assert (spec.outputs.s3.bucket, spec.outputs.s3.endpoint, spec.outputs.s3.path) == (
        "retina-bucket", "https://play.min.io:9000", "retina/captures")


def test_version_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``kubectl retina version`` prints the version, as Retina's does (no cluster needed)."""
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == importlib.metadata.version("retina-otel")


def test_connection_flags_after_the_command(cluster: tuple[str, KubeClient]) -> None:
    """Retina's commands take kubectl's connection flags after the command (``kubectl retina capture create
    --context prod ...``); here too, and one given there wins over one given before the command."""
    url, c = cluster
    assert main(["capture", "create", "--api-url", url, "--name", "after", "-n", "default", "--node-names", "n1",
                 "--host-path", "flags"]) == 0
    assert c.list(kube.JOBS, "default", labels={LABEL_CAPTURE: "after"})
    parser = build_parser()
    for command in (["capture", "create"], ["capture", "list"], ["capture", "delete", "--name", "x"],
                    ["capture", "download", "--all"], ["shell", "node-1"], ["observe"]):
        args = parser.parse_args([*command, "--kubeconfig", "k", "--context", "prod", "--insecure-skip-tls-verify"])
        assert (args.kubeconfig, args.context, args.insecure) == ("k", "prod", True), command
        args = parser.parse_args(["--context", "before", *command])
        assert (args.kubeconfig, args.context, args.insecure) == (None, "before", False), command


def test_target_size_and_ring_flags_reach_tcpdump(cluster: tuple[str, KubeClient]) -> None:
    """Retina's --interfaces, --packet-size, --max-size, --file-count and --duration reach the Job and, as the
    workload builds its settings from the Job, tcpdump's argv (-i per interface, -s, the -C/-W ring)."""
    url, c = cluster
    job = created_job(url, c, "sizes", "--interfaces", "eth0, eth1", "--packet-size", "96", "--max-size", "2",
                      "--file-count", "3", "--duration", "30s")
    _, spec, _ = job_view(job)
    assert (spec.interfaces, spec.packet_size, spec.max_capture_size_mb, spec.file_count, spec.duration) == (
        ("eth0", "eth1"), 96, 2, 3, 30.0)
    assert spec.max_capture_size_mb is not None
    settings = TcpdumpSettings(interfaces=spec.interfaces, duration=spec.duration, packet_size=spec.packet_size,
                               max_bytes=spec.max_capture_size_mb * MB, file_count=spec.file_count)
    for interface in spec.interfaces:
        argv = tcpdump_args(settings, interface, Path(f"/retina/capture/work/x-{interface}.pcap"))
        assert argv[argv.index("-i") + 1] == interface
        assert argv[argv.index("-s") + 1] == "96"
        assert argv[argv.index("-W") + 1] == "3" and int(argv[argv.index("-C") + 1]) >= 2
