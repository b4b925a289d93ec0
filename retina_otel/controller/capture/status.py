"""A Capture's status from its Jobs: counts, per-job state, conditions and times."""

from __future__ import annotations

import datetime

from retina_otel.controller.capture.failure import CaptureFailure, Reason
from retina_otel.controller.capture.settings import ANNOTATION_NODE
from retina_otel.controller.kube import Obj, object_meta

__all__ = ["NOT_CREATED", "compute_status", "failure_status", "job_state", "now_iso"]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_state(job: Obj) -> str:
    """``succeeded``, ``failed`` or ``active`` (pending or running)."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True":
            if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
                return "succeeded"
            if cond.get("type") in ("Failed", "FailureTarget"):
                return "failed"
    if int(status.get("succeeded") or 0) > 0:
        return "succeeded"
    if int(status.get("failed") or 0) > 0:
        return "failed"
    return "active"


def _condition(ctype: str, status: bool, reason: str, message: str, previous: list[Obj], now: str) -> Obj:
    text = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    keep = old is not None and old.get("status") == text and old.get("lastTransitionTime")
    since = old["lastTransitionTime"] if keep and old is not None else now
    return {"type": ctype, "status": text, "reason": reason, "message": message, "lastTransitionTime": since}


def failure_status(old_status: Obj | None, failure: CaptureFailure, now: str | None = None) -> Obj:
    now = now or now_iso()
    prev = list((old_status or {}).get("conditions") or [])
    return {
        "conditions": [
            _condition("complete", False, failure.reason, failure.message, prev, now),
            _condition("error", True, failure.reason, failure.message, prev, now),
        ],
        "active": 0,
        "succeeded": 0,
        "failed": 0,
    }


NOT_CREATED = "notCreated"
"""``status.jobs[].state`` of a target node whose Job could not be created (its ``name`` is empty)."""


def compute_status(
    old_status: Obj | None, jobs: list[Obj], now: str | None = None, missing_nodes: list[str] | None = None
) -> Obj:
    """Status from the Capture's Jobs (counts, conditions, times). ``missing_nodes``: target nodes whose
    Job could not be created; by default those the old status lists as not created that still have no
    Job. While one is missing, the conditions say CreateJobFailed, whatever the other Jobs did."""
    now = now or now_iso()
    old = old_status or {}
    prev = list(old.get("conditions") or [])
    nodes_with_jobs = {str((object_meta(j).get("annotations") or {}).get(ANNOTATION_NODE, "")) for j in jobs}
    if missing_nodes is None:
        missing_nodes = [e["node"] for e in old.get("jobs") or [] if e.get("state") == NOT_CREATED]
    missing = sorted({n for n in missing_nodes if n not in nodes_with_jobs})
    states = [(j, job_state(j)) for j in jobs]
    active = sum(1 for _, s in states if s == "active")
    succeeded = sum(1 for _, s in states if s == "succeeded")
    failed = sum(1 for _, s in states if s == "failed")
    total = len(states)
    failed_nodes = sorted(
        str((object_meta(j).get("annotations") or {}).get(ANNOTATION_NODE, object_meta(j).get("name")))
        for j, s in states
        if s == "failed"
    )
    conditions: list[Obj] = []
    status: Obj = {
        "startTime": old.get("startTime") or now,
        "active": active,
        "succeeded": succeeded,
        "failed": failed,
        "jobs": [
            {
                "name": str(object_meta(j).get("name")),
                "node": str((object_meta(j).get("annotations") or {}).get(ANNOTATION_NODE, "")),
                "state": s,
            }
            for j, s in states
        ]
        + [{"name": "", "node": n, "state": NOT_CREATED} for n in missing],
    }
    fail_msg = (
        f"{failed} of {total} capture jobs failed (nodes: {', '.join(failed_nodes)}); see the logs of the jobs' pods"
    )
    if missing:
        not_created = (
            f"capture jobs could not be created for {len(missing)} of {total + len(missing)} target nodes "
            f"(nodes: {', '.join(missing)})"
        )
        if failed:
            not_created += f"; {fail_msg}"
        conditions.append(_condition("complete", False, Reason.CREATE_JOB_FAILED, not_created, prev, now))
        conditions.append(_condition("error", True, Reason.CREATE_JOB_FAILED, not_created, prev, now))
        status["completionTime"] = None
    elif active:
        conditions.append(
            _condition(
                "complete", False, Reason.JOBS_IN_PROGRESS, f"{active} of {total} capture jobs running", prev, now
            )
        )
        if failed:
            conditions.append(_condition("error", True, Reason.RUN_JOB_FAILED, fail_msg, prev, now))
        status["completionTime"] = None
    elif failed:
        conditions.append(_condition("complete", False, Reason.RUN_JOB_FAILED, fail_msg, prev, now))
        conditions.append(_condition("error", True, Reason.RUN_JOB_FAILED, fail_msg, prev, now))
        status["completionTime"] = None
    else:
        conditions.append(
            _condition("complete", True, Reason.JOBS_COMPLETED, f"all {total} capture jobs completed", prev, now)
        )
        status["completionTime"] = old.get("completionTime") or now
    status["conditions"] = conditions
    return status
