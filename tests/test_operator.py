"""The kopf operator against kmock's KubernetesEmulator over HTTP (both in background threads)."""

from __future__ import annotations

import gc
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.controller import kube, run_operator
from retina_otel.controller.capture import LABEL_CAPTURE, LABEL_GENERATED
from retina_otel.controller.keyedlocks import KeyedLocks
from retina_otel.controller.kube import KubeClient
from retina_otel.testing import wait_for
from retina_otel.testing_k8s import EmulatedCluster

NS = "captures"
TIMEOUT = 15.0


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as e:
        yield e


@pytest.fixture(scope="module")
def client(emu: EmulatedCluster) -> Iterator[KubeClient]:
    c = KubeClient.from_options(api_url=emu.url)
    _seed_cluster(c)
    yield c
    c.close()


@pytest.fixture(scope="module")
def metrics_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def operator(emu: EmulatedCluster, client: KubeClient, metrics_port: int) -> Iterator[None]:
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_operator(
                namespace=None, install_crds=True, api_url=emu.url, job_num_limit=3,
                retina_endpoints=True, resync_interval=2.0, consistency_timeout=0.2, stop_flag=stop, ready_flag=ready,
                metrics_endpoint=f"127.0.0.1:{metrics_port}",
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="operator", daemon=True)
    thread.start()
    assert ready.wait(20), f"operator not ready: {errors}"
    yield
    stop.set()
    thread.join(20)
    assert not thread.is_alive(), "operator thread did not stop"
    assert not errors, errors


def _seed_cluster(c: KubeClient) -> None:
    for name, labels in [("node-a", {"pool": "x", "zone": "1"}), ("node-b", {"pool": "x", "zone": "2"}),
                         ("node-c", {"pool": "y"}), ("node-d", {"pool": "z"}), ("node-e", {"pool": "z"}),
                         ("node-f", {"pool": "z"}), ("node-g", {"pool": "z"})]:
        c.create(kube.NODES, {"metadata": {"name": name, "labels": labels}})
    for name, labels in [(NS, {"team": "net"}), ("web", {"team": "web"}), ("other", {"team": "other"})]:
        c.create(kube.NAMESPACES, {"metadata": {"name": name, "labels": labels}})
    pods = [
        ("web", "web-1", {"app": "web"}, "node-a", "198.18.0.11"),
        ("web", "web-2", {"app": "web"}, "node-b", "198.18.0.12"),
        ("web", "web-3", {"app": "web"}, "node-b", "198.18.0.13"),
        ("other", "web-x", {"app": "web"}, "node-c", "198.18.0.14"),
        (NS, "db-1", {"app": "db"}, "node-c", "198.18.0.21"),
    ]
    for ns, name, labels, node, ip in pods:
        c.create(kube.PODS, _pod(ns, name, labels, node, ip), ns)
    c.create(kube.SECRETS, {"metadata": {"name": "blob-sas", "namespace": NS},
                            "data": {"blob-upload-url": "aHR0cHM6Ly9zZWNyZXQ="}}, NS)
    c.create(kube.SECRETS, {"metadata": {"name": "s3-keys", "namespace": NS},
                            "data": {"s3-access-key-id": "QQ==", "s3-secret-access-key": "Qg=="}}, NS)
    c.create(kube.SECRETS, {"metadata": {"name": "half-s3", "namespace": NS},
                            "data": {"s3-access-key-id": "QQ=="}}, NS)


def _pod(ns: str, name: str, labels: dict[str, str], node: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{ns}-{name}"},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "198.19.0.1"},
    }


def _capture(name: str, target: dict[str, Any], output: dict[str, Any] | None = None,
             option: dict[str, Any] | None = None, **conf: Any) -> dict[str, Any]:
    return {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "Capture",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {
            "captureConfiguration": {
                "captureTarget": target,
                "captureOption": option if option is not None else {"duration": "30s"},
                **conf,
            },
            "outputConfiguration": output if output is not None else {"hostPath": "captures"},
        },
    }


def _jobs(c: KubeClient, name: str) -> list[dict[str, Any]]:
    return sorted(c.list(kube.JOBS, NS, labels={LABEL_CAPTURE: name}), key=lambda j: j["metadata"]["name"])


def _status(c: KubeClient, name: str) -> dict[str, Any]:
    obj = c.get_or_none(kube.CAPTURES, name, NS)
    return (obj or {}).get("status") or {}


def _cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((x for x in status.get("conditions") or [] if x["type"] == ctype), {})


def _spec_env(job: dict[str, Any]) -> dict[str, Any]:
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return json.loads(next(e["value"] for e in env if e["name"] == "RETINA_CAPTURE_SPEC"))


def _set_job_status(c: KubeClient, job: dict[str, Any], state: str) -> None:
    status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]} if state == "ok" else \
        {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}
    c.patch_status(kube.JOBS, job["metadata"]["name"], status, NS)


def test_crds_installed_on_start(client: KubeClient, operator: None) -> None:
    names = {c["metadata"]["name"] for c in client.list(kube.CRDS)}
    assert {"captures.retina.sh", "metricsconfigurations.retina.sh", "retinaendpoints.retina.sh",
            "tracesconfigurations.retina.sh"} <= names


def test_node_selector_capture_runs_to_completion(client: KubeClient, operator: None) -> None:
    client.create(kube.CAPTURES, _capture("by-node", {"nodeSelector": {"matchLabels": {"pool": "x"}}},
                                          output={"hostPath": "net/captures", "blobUpload": "blob-sas"}), NS)
    assert wait_for(lambda: len(_jobs(client, "by-node")) == 2, TIMEOUT)
    jobs = _jobs(client, "by-node")
    assert [j["spec"]["template"]["spec"]["nodeName"] for j in jobs] == ["node-a", "node-b"]
    job = jobs[0]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostNetwork"] is True and job["spec"]["backoffLimit"] == 0
    assert pod["tolerations"] == [{"operator": "Exists"}]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["command"] == ["retina-otel", "capture", "run"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-by-node"
    spec = _spec_env(job)
    assert spec["captureName"] == "by-node" and spec["durationSeconds"] == 30.0
    assert spec["filter"].get("podIPs", []) == []
    assert spec["outputs"]["hostPathOnNode"] == "/var/log/retina/captures/net/captures"
    assert spec["outputs"]["blob"]["sasUrlFile"].startswith("/retina/secrets/blob/")
    # The secret is mounted as a file; its value appears nowhere in the Job.
    assert "aHR0cHM6Ly9zZWNyZXQ=" not in json.dumps(job) and "https://secret" not in json.dumps(job)
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["blob-secret"]["secret"]["secretName"] == "blob-sas"
    assert vols["hostpath"]["hostPath"]["path"] == "/var/log/retina/captures/net/captures"

    assert wait_for(lambda: _cond(_status(client, "by-node"), "complete").get("reason") == "JobsInProgress", TIMEOUT)
    st = _status(client, "by-node")
    assert st["active"] == 2 and st["startTime"]

    _set_job_status(client, jobs[0], "ok")
    assert wait_for(lambda: _status(client, "by-node").get("succeeded") == 1, TIMEOUT)
    assert _status(client, "by-node")["active"] == 1
    _set_job_status(client, jobs[1], "ok")
    assert wait_for(lambda: _cond(_status(client, "by-node"), "complete").get("status") == "True", TIMEOUT)
    st = _status(client, "by-node")
    assert _cond(st, "complete")["reason"] == "JobsCompleted"
    assert st["succeeded"] == 2 and st["active"] == 0 and st["completionTime"]


def test_pod_selector_with_namespace_selector(client: KubeClient, operator: None) -> None:
    client.create(kube.CAPTURES, _capture("by-pods", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "namespaceSelector": {"matchLabels": {"team": "web"}},
    }, filters={"include": ["198.18.0.1:80"], "exclude": ["*:22"]}), NS)
    assert wait_for(lambda: len(_jobs(client, "by-pods")) == 2, TIMEOUT)
    by_node = {j["spec"]["template"]["spec"]["nodeName"]: _spec_env(j) for j in _jobs(client, "by-pods")}
    assert set(by_node) == {"node-a", "node-b"}  # web-x in namespace "other" is not selected
    assert by_node["node-a"]["filter"]["podIPs"] == ["198.18.0.11"]
    assert by_node["node-b"]["filter"]["podIPs"] == ["198.18.0.12", "198.18.0.13"]
    assert by_node["node-a"]["filter"]["include"] == ["198.18.0.1:80"]
    assert by_node["node-a"]["filter"]["exclude"] == ["*:22"]


def test_pod_selector_defaults_to_capture_namespace_and_pod_names(client: KubeClient, operator: None) -> None:
    client.create(kube.CAPTURES, _capture("by-db", {"podSelector": {"matchLabels": {"app": "db"}}}), NS)
    client.create(kube.CAPTURES, _capture("by-name", {"podNames": ["web/web-2", "db-1"]},
                                          output={"s3Upload": {"bucket": "caps", "secretName": "s3-keys",
                                                               "endpoint": "http://198.18.0.1:9000"}}), NS)
    assert wait_for(lambda: len(_jobs(client, "by-db")) == 1 and len(_jobs(client, "by-name")) == 2, TIMEOUT)
    db = _jobs(client, "by-db")[0]
    assert db["spec"]["template"]["spec"]["nodeName"] == "node-c"
    assert _spec_env(db)["filter"]["podIPs"] == ["198.18.0.21"]
    by_node = {j["spec"]["template"]["spec"]["nodeName"]: _spec_env(j) for j in _jobs(client, "by-name")}
    assert by_node["node-b"]["filter"]["podIPs"] == ["198.18.0.12"]
    assert by_node["node-c"]["filter"]["podIPs"] == ["198.18.0.21"]
    s3 = by_node["node-b"]["outputs"]["s3"]
    assert s3["bucket"] == "caps" and s3["accessKeyIdFile"].startswith("/retina/secrets/s3/")


def test_failed_job_sets_error(client: KubeClient, operator: None) -> None:
    client.create(kube.CAPTURES, _capture("will-fail", {"nodeSelector": {"matchLabels": {"pool": "y"}}}), NS)
    assert wait_for(lambda: len(_jobs(client, "will-fail")) == 1, TIMEOUT)
    _set_job_status(client, _jobs(client, "will-fail")[0], "failed")
    assert wait_for(lambda: _cond(_status(client, "will-fail"), "error").get("reason") == "RunJobFailed", TIMEOUT)
    st = _status(client, "will-fail")
    assert st["failed"] == 1 and st["active"] == 0 and "node-c" in _cond(st, "error")["message"]
    assert "completionTime" not in st


@pytest.mark.parametrize(
    ("name", "capture", "reason", "words"),
    [
        ("two-targets", _capture("two-targets", {"nodeSelector": {}, "podNames": ["db-1"]}),
         "InvalidSpec", "exactly one of"),
        # An empty captureOption gets Retina's maxCaptureSize default (100 MB); only an explicit null stops nothing.
        ("no-stop", _capture("no-stop", {"nodeSelector": {}}, option={"maxCaptureSize": None}), "InvalidSpec",
         "duration or maxCaptureSize"),
        ("abs-path", _capture("abs-path", {"nodeSelector": {}}, output={"hostPath": "/etc"}), "InvalidSpec",
         "is absolute"),
        ("dotdot", _capture("dotdot", {"nodeSelector": {}}, output={"hostPath": "a/../../etc"}), "InvalidSpec",
         "'..'"),
        ("no-secret", _capture("no-secret", {"nodeSelector": {"matchLabels": {"pool": "y"}}},
                               output={"blobUpload": "missing-sas"}), "FindSecretFailed", "not found"),
        ("half-secret", _capture("half-secret", {"nodeSelector": {"matchLabels": {"pool": "y"}}},
                                 output={"s3Upload": {"bucket": "abc", "secretName": "half-s3"}}),
         "FindSecretFailed", "s3-secret-access-key"),
        ("too-many", _capture("too-many", {"nodeSelector": {"matchLabels": {"pool": "z"}}}), "ExceedJobNumLimit",
         "at most 3"),
        ("spec-limit", _capture("spec-limit", {"nodeSelector": {"matchLabels": {"pool": "x"}}}, jobNumLimit=1),
         "ExceedJobNumLimit", "at most 1"),
        ("no-match", _capture("no-match", {"podSelector": {"matchLabels": {"app": "nothing"}}}), "OtherError",
         "no running pod"),
    ],
)
def test_invalid_capture_gets_error_and_no_job(
    client: KubeClient, operator: None, name: str, capture: dict[str, Any], reason: str, words: str
) -> None:
    client.create(kube.CAPTURES, capture, NS)
    assert wait_for(lambda: _cond(_status(client, name), "error").get("status") == "True", TIMEOUT)
    err = _cond(_status(client, name), "error")
    assert err["reason"] == reason, err
    assert words in err["message"], err["message"]
    assert _cond(_status(client, name), "complete")["status"] == "False"
    assert _jobs(client, name) == []


def _generated_secret(client: KubeClient, name: str, capture: str) -> None:
    client.create(kube.SECRETS, {"metadata": {"name": name, "namespace": NS, "labels": {
        LABEL_CAPTURE: capture, "retina.sh/app": "capture", LABEL_GENERATED: "true"}},
        "data": {"blob-upload-url": "eA=="}}, NS)


def _owned_by_capture(client: KubeClient, secret: str, capture: str) -> None:
    """What a tool that generates a Capture's Secret does once the Capture exists: the owner reference
    through which Kubernetes' garbage collector deletes the Secret with it (kmock has no collector)."""
    uid = client.get(kube.CAPTURES, capture, NS)["metadata"]["uid"]
    client.patch(kube.SECRETS, secret, {"metadata": {"ownerReferences": [
        {"apiVersion": "retina.sh/v1alpha1", "kind": "Capture", "name": capture, "uid": uid}]}}, NS)


def _left_to_the_collector(client: KubeClient, secret: str, capture: str) -> None:
    """The operator deleted no Secret (it has no delete on Secrets); the owner reference is in place."""
    refs = client.get(kube.SECRETS, secret, NS)["metadata"].get("ownerReferences") or []
    assert [(r["kind"], r["name"]) for r in refs] == [("Capture", capture)]


def test_delete_removes_jobs_and_leaves_generated_secrets_to_gc(client: KubeClient, operator: None) -> None:
    _generated_secret(client, "gen-sas", "to-delete")
    client.create(kube.CAPTURES, _capture("to-delete", {"nodeSelector": {"matchLabels": {"pool": "x"}}},
                                          output={"blobUpload": "gen-sas"}), NS)
    _owned_by_capture(client, "gen-sas", "to-delete")
    assert wait_for(lambda: len(_jobs(client, "to-delete")) == 2, TIMEOUT)
    assert wait_for(lambda: "retina.sh/capture-cleanup" in (
        client.get(kube.CAPTURES, "to-delete", NS)["metadata"].get("finalizers") or []), TIMEOUT)
    client.delete(kube.CAPTURES, "to-delete", NS)
    assert wait_for(lambda: client.get_or_none(kube.CAPTURES, "to-delete", NS) is None, TIMEOUT)
    assert _jobs(client, "to-delete") == []
    _left_to_the_collector(client, "gen-sas", "to-delete")
    assert client.get_or_none(kube.SECRETS, "blob-sas", NS) is not None  # user secrets stay


def test_clean_up_after_upload(client: KubeClient, operator: None) -> None:
    """Retina's cleanUpAfterUpload: once every Job succeeded the Capture and its Jobs go (its generated
    Secrets with it, by their owner references)."""
    _generated_secret(client, "gen-cleanup", "auto-clean")
    capture = _capture("auto-clean", {"nodeSelector": {"matchLabels": {"pool": "x"}}},
                       output={"blobUpload": "gen-cleanup"})
    capture["spec"]["cleanUpAfterUpload"] = True
    client.create(kube.CAPTURES, capture, NS)
    _owned_by_capture(client, "gen-cleanup", "auto-clean")
    assert wait_for(lambda: len(_jobs(client, "auto-clean")) == 2, TIMEOUT)
    first, second = _jobs(client, "auto-clean")
    _set_job_status(client, first, "ok")
    assert wait_for(lambda: _status(client, "auto-clean").get("succeeded") == 1, TIMEOUT)
    assert client.get_or_none(kube.CAPTURES, "auto-clean", NS) is not None  # not before every Job is done
    _set_job_status(client, second, "ok")
    # Status refresh, delete, then the delete handler's clean-up before the finalizer goes (a retry of
    # that handler waits 5 s): seen taking longer than TIMEOUT twice in full CI runs, never alone.
    gone = wait_for(lambda: client.get_or_none(kube.CAPTURES, "auto-clean", NS) is None, 3 * TIMEOUT)
    left = client.get_or_none(kube.CAPTURES, "auto-clean", NS) or {}
    assert gone, (left.get("metadata", {}).get("deletionTimestamp"), left.get("metadata", {}).get("finalizers"),
                  left.get("status"), [j["metadata"]["name"] for j in _jobs(client, "auto-clean")])
    assert wait_for(lambda: _jobs(client, "auto-clean") == [], TIMEOUT)
    _left_to_the_collector(client, "gen-cleanup", "auto-clean")


def _mc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration", "metadata": {"name": name},
            "spec": spec}


GOOD_MC = {"contextOptions": [{"metricName": "drop", "sourceLabels": ["ip", "podname"]}],
           "namespaces": {"include": ["default"]}}


def test_metrics_configuration_single_accepted(client: KubeClient, operator: None) -> None:
    def state(n: str) -> tuple[str, str]:
        st = (client.get_or_none(kube.METRICS_CONFIGS, n) or {}).get("status") or {}
        return st.get("state", ""), st.get("reason", "")

    client.create(kube.METRICS_CONFIGS, _mc("mc-a", GOOD_MC))
    assert wait_for(lambda: state("mc-a")[0] == "Accepted", TIMEOUT)
    client.create(kube.METRICS_CONFIGS, _mc("mc-b", GOOD_MC))
    assert wait_for(lambda: state("mc-b")[0] == "Errored", TIMEOUT)
    assert "mc-a" in state("mc-b")[1]
    client.create(kube.METRICS_CONFIGS, _mc("mc-bad", {"contextOptions": [{"metricName": "drop"}],
                                                       "namespaces": {"include": ["a"], "exclude": ["b"]}}))
    assert wait_for(lambda: state("mc-bad")[0] == "Errored", TIMEOUT)
    assert "exactly one of include or exclude" in state("mc-bad")[1]
    assert state("mc-a")[0] == "Accepted"
    client.delete(kube.METRICS_CONFIGS, "mc-a")
    assert wait_for(lambda: state("mc-b")[0] == "Accepted", TIMEOUT)


def test_retina_endpoints_follow_pods(client: KubeClient, operator: None) -> None:
    assert wait_for(lambda: client.get_or_none(kube.RETINA_ENDPOINTS, "web-1", "web") is not None, TIMEOUT)
    ep = client.get(kube.RETINA_ENDPOINTS, "web-1", "web")
    assert ep["spec"]["podIP"] == "198.18.0.11" and ep["spec"]["labels"] == {"app": "web"}
    assert ep["spec"]["containers"] == [{"name": "main"}]
    client.create(kube.PODS, _pod("web", "web-9", {"app": "web"}, "node-a", "198.18.0.19"), "web")
    assert wait_for(lambda: client.get_or_none(kube.RETINA_ENDPOINTS, "web-9", "web") is not None, TIMEOUT)
    client.patch(kube.PODS, "web-9", {"metadata": {"labels": {"app": "web", "v": "2"}}}, "web")
    assert wait_for(lambda: (client.get(kube.RETINA_ENDPOINTS, "web-9", "web")["spec"]["labels"]
                             == {"app": "web", "v": "2"}), TIMEOUT)
    client.delete(kube.PODS, "web-9", "web")
    assert wait_for(lambda: client.get_or_none(kube.RETINA_ENDPOINTS, "web-9", "web") is None, TIMEOUT)


def _operator_metrics(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of the operator's /metrics (the OTel reader's exposition)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_operator_metrics_count_reconciles_jobs_and_captures_by_phase(
    client: KubeClient, operator: None, metrics_port: int
) -> None:
    """The operator's own metrics (OTel SDK + Prometheus reader): after the tests above, Captures that
    started and ones that could not, Jobs created, and every Capture the operator saw by phase."""
    client.create(kube.CAPTURES, _capture("metrics-bad", {"nodeSelector": {"matchLabels": {"pool": "none"}}}), NS)
    assert wait_for(lambda: _cond(_status(client, "metrics-bad"), "error").get("status") == "True", TIMEOUT)

    def value(series: str) -> float:
        return _operator_metrics(metrics_port).get(series, 0.0)

    assert wait_for(lambda: value('retina_operator_reconciles_total{kind="Capture",result="failed"}') >= 1, TIMEOUT)
    assert value('retina_operator_reconciles_total{kind="Capture",result="ok"}') >= 1
    assert value('retina_operator_reconciles_total{kind="MetricsConfiguration",result="ok"}') >= 1
    assert value("retina_operator_capture_jobs_created_total") >= 2
    phases = {p: value(f'retina_operator_captures{{phase="{p}"}}') for p in ("pending", "completed", "failed")}
    assert phases["failed"] >= 1 and phases["completed"] >= 1, phases


CHURN_PODS = 30


def test_pod_churn_leaves_no_lock_behind(client: KubeClient, operator: None) -> None:
    """The operator's per-pod locks are forgotten: pods created and deleted (each making and removing its
    RetinaEndpoint under the pod's lock) leave the operator's lock table empty. Few pods, and last in this
    module: kmock slows down once many objects have passed through it (10,000 keys: tests/test_keyedlocks.py)."""
    tables = [o for o in gc.get_objects() if isinstance(o, KeyedLocks)]  # the running operator's (and any other)
    assert tables
    names = [f"churn-{i}" for i in range(CHURN_PODS)]

    def endpoints() -> set[str]:
        return {e["metadata"]["name"] for e in client.list(kube.RETINA_ENDPOINTS, "other")} & set(names)

    for i, name in enumerate(names):
        client.create(kube.PODS, _pod("other", name, {"app": "churn"}, "node-c", f"198.18.7.{i}"), "other")
    assert wait_for(lambda: endpoints() == set(names), 60), len(endpoints())
    for name in names:
        client.delete(kube.PODS, name, "other")
    assert wait_for(lambda: not endpoints(), 60), len(endpoints())
    assert wait_for(lambda: all(len(t) == 0 for t in tables), TIMEOUT), [len(t) for t in tables]
