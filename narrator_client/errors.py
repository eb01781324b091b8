"""Typed errors: each carries the API's error code, so callers branch on `err.code`, not on text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from narrator_client.job import Job


class NarratorError(Exception):
    """Anything that kept a call from giving its result."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ApiError(NarratorError):
    """The service answered with an error: `status` (HTTP) and `code` (e.g. "invalid_words")."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class NotFound(ApiError):
    """404: no such job, or it expired, or it belongs to someone else."""


class RateLimited(ApiError):
    """429: over a rate limit or the queued-jobs cap; `retry_after` says when to try again."""


class ServiceUnavailable(ApiError):
    """503 (and 502/504 from a proxy): Redis, storage or the queue is down for now."""


class ConnectionFailed(NarratorError):
    """No answer at all: wrong URL, service down, network cut, or a timeout."""

    code = "connection_failed"


class JobFailed(NarratorError):
    """The job ended without a story: failed or canceled. `job` is its last state."""

    def __init__(self, job: Job):
        status = job.status.value
        reason = f": {job.error}" if job.error else ""
        super().__init__(f"job {job.id} {status}{reason}")
        self.job, self.code = job, f"job_{status}"


class WaitTimeout(NarratorError, TimeoutError):
    """The job did not finish within the time `wait` was given. `job` is its last state (None
    when no poll was answered)."""

    code = "wait_timeout"

    def __init__(self, job_id: str, job: Job | None, timeout: float):
        state = job.status.value if job is not None else "unknown"
        super().__init__(f"job {job_id} still {state} after {timeout:g} s")
        self.job_id, self.job = job_id, job


def error_for(status: int, body: Any, retry_after: float | None) -> ApiError:
    """The typed error for an error response; bodies that are not the API's JSON (a proxy's page)
    get the code `http_<status>`."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code, message = error["code"], str(error.get("message") or "")
    else:
        code, message = f"http_{status}", "the service answered with an error page"
    kind = {
        404: NotFound,
        429: RateLimited,
        502: ServiceUnavailable,
        503: ServiceUnavailable,
        504: ServiceUnavailable,
    }.get(status, ApiError)
    return kind(status, code, message, retry_after)
