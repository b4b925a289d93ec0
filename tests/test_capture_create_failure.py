"""A Capture whose Job creation fails for some nodes after others got theirs: the status says
CreateJobFailed, naming the nodes, for as long as a node has no Job, also after the created Jobs
complete (before: JobsCompleted with nodes missing); the operator's resync creates the missing Job once
the API takes it. Against kmock's emulator, with the API refusing one node's Job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.controller import kube
from retina_otel.controller.capture import (
    NOT_CREATED,
    CaptureSettings,
    JobsNotCreated,
    Reason,
    compute_status,
    create_jobs,
    list_capture_jobs,
    now_iso,
    plan_jobs,
)
from retina_otel.controller.handlers import install_crds, refresh_capture
from retina_otel.controller.kube import ApiError, KubeClient
from retina_otel.testing_k8s import EmulatedCluster

NS = "captures"


class _RefusesJobFor(KubeClient):
    """The real client, except that the API answers 403 to creating the Job of one node."""

    node = ""

    def create(self, res: kube.Resource, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if res is kube.JOBS and self.node in annotations.values():
            raise ApiError(403, "Forbidden", "exceeded quota: capture-jobs")
        return super().create(res, body, namespace)


@pytest.fixture
def client() -> Iterator[_RefusesJobFor]:
    with EmulatedCluster() as emu:
        c = _RefusesJobFor.from_options(api_url=emu.url)
        assert isinstance(c, _RefusesJobFor)
        install_crds(c)
        c.create(kube.NAMESPACES, {"metadata": {"name": NS}})
        for name in ("node-a", "node-b", "node-c"):
            c.create(kube.NODES, {"metadata": {"name": name, "labels": {"pool": "x"}}})
        try:
            yield c
        finally:
            c.close()


def _cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_create_job_failed_persists_until_every_node_has_its_job(client: _RefusesJobFor) -> None:
    client.node = "node-b"
    capture = client.create(kube.CAPTURES, {
        "apiVersion": "retina.sh/v1alpha1", "kind": "Capture", "metadata": {"name": "cap", "namespace": NS},
        "spec": {"captureConfiguration": {"captureTarget": {"nodeSelector": {"matchLabels": {"pool": "x"}}},
                                          "captureOption": {"duration": "30s"}},
                 "outputConfiguration": {"hostPath": "captures"}},
    }, NS)  # fmt: skip
    jobs = plan_jobs(client, capture, CaptureSettings())
    assert len(jobs) == 3
    with pytest.raises(JobsNotCreated) as info:
        create_jobs(client, jobs)
    assert info.value.missing == ["node-b"] and len(info.value.created) == 2  # the others were still tried
    status = compute_status({"startTime": now_iso()}, info.value.created, missing_nodes=info.value.missing)
    client.patch_status(kube.CAPTURES, "cap", status, NS)
    assert _cond(status, "error")["reason"] == Reason.CREATE_JOB_FAILED
    assert "node-b" in _cond(status, "error")["message"]
    assert {"name": "", "node": "node-b", "state": NOT_CREATED} in status["jobs"]

    for job in list_capture_jobs(client, NS, "cap"):  # the two created Jobs complete
        client.patch_status(kube.JOBS, job["metadata"]["name"],
                            {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}, NS)  # fmt: skip
    refreshed = refresh_capture(client, NS, "cap")
    assert refreshed is not None
    assert _cond(refreshed, "complete") == {**_cond(refreshed, "complete"), "status": "False",
                                             "reason": Reason.CREATE_JOB_FAILED}  # fmt: skip
    assert refreshed["succeeded"] == 2 and "node-b" in _cond(refreshed, "error")["message"]

    retried = refresh_capture(client, NS, "cap", settings=CaptureSettings())  # the operator's resync: still refused
    assert retried is not None and _cond(retried, "error")["reason"] == Reason.CREATE_JOB_FAILED

    client.node = ""  # the API takes the Job now: the next resync creates it, for node-b only
    client.create(kube.NODES, {"metadata": {"name": "node-d", "labels": {"pool": "x"}}})  # matched since
    running = refresh_capture(client, NS, "cap", settings=CaptureSettings())
    assert running is not None and _cond(running, "complete")["reason"] == Reason.JOBS_IN_PROGRESS
    assert sorted(e["node"] for e in running["jobs"]) == ["node-a", "node-b", "node-c"]
    for job in list_capture_jobs(client, NS, "cap"):
        client.patch_status(kube.JOBS, job["metadata"]["name"],
                            {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}, NS)  # fmt: skip
    done = refresh_capture(client, NS, "cap", settings=CaptureSettings())
    assert done is not None and _cond(done, "complete")["reason"] == Reason.JOBS_COMPLETED
    assert done["succeeded"] == 3 and all(e["state"] == "succeeded" for e in done["jobs"])
