"""Why a Capture cannot run: the condition reasons and the exception that carries one."""

from __future__ import annotations

__all__ = ["CaptureFailure", "JobsNotCreated", "Reason"]


class Reason:
    """Condition reasons (Retina's, plus InvalidSpec for specs that fail validation)."""

    JOBS_IN_PROGRESS = "JobsInProgress"
    JOBS_COMPLETED = "JobsCompleted"
    RUN_JOB_FAILED = "RunJobFailed"
    EXCEED_JOB_NUM_LIMIT = "ExceedJobNumLimit"
    FIND_SECRET_FAILED = "FindSecretFailed"
    CREATE_JOB_FAILED = "CreateJobFailed"
    INVALID_SPEC = "InvalidSpec"
    OTHER_ERROR = "OtherError"


class CaptureFailure(Exception):
    """A Capture that cannot run; ``reason`` is a :class:`Reason`, ``message`` says what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class JobsNotCreated(CaptureFailure):
    """Some of a Capture's Jobs were created and some were not: ``created`` (the Jobs) and ``missing``
    (the nodes without one). The Capture's status keeps saying CreateJobFailed while a node is missing."""

    def __init__(self, message: str, created: list[dict[str, object]], missing: list[str]) -> None:
        super().__init__(Reason.CREATE_JOB_FAILED, message)
        self.created = created
        self.missing = missing
