"""The job as the API shows it: what GET /api/v1/jobs/<id> answers, a webhook's `data` carries and
this client returns. The service builds its answers from this model (shared/jobs/public.py) and its
OpenAPI document's `Job` schema is generated from it, so the three cannot drift apart.

It lives here, not in the service's packages, because the client is meant to be copied on its own
(it needs requests, tqdm and pydantic, nothing of the service's).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

WORDS_MIN, WORDS_MAX = 10, 200  # a story's length, in words
SEED_MAX = 2**32 - 1  # what torch/numpy seeding accepts everywhere
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # ids are secrets.token_urlsafe's


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class Stage(str, Enum):
    CAPTION = "caption"
    STORY = "story"
    SPEECH = "speech"
    UPLOAD = "upload"


Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]  # ISO 8601 UTC, kept as sent
Url = Annotated[str, Field(json_schema_extra={"format": "uri-reference"})]


class Job(BaseModel):
    """A job. Every field is always present (null when it does not apply yet)."""

    # Lenient when reading (a newer service may add fields), strict in the document (this service sends no others).
    model_config = ConfigDict(extra="ignore", json_schema_extra={"additionalProperties": False}, title="Job")

    id: str = Field(pattern=JOB_ID_PATTERN)
    status: JobStatus
    stage: Stage | None = Field(description="What a running job is doing; null otherwise.")
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    caption: str | None = Field(description="Set as soon as the photo is described.")
    story: str | None = Field(description="Set as soon as the story is written.")
    audio_url: Url | None = Field(
        description="The audio endpoint once the job succeeded (absolute under PUBLIC_BASE_URL)."
    )
    audio_seconds: float | None = Field(ge=0)
    subtitles_url: Url | None = Field(
        description="WebVTT of the spoken words, timed to the audio, once the job succeeded."
    )
    error: str | None = Field(description="Why the job failed.")
    timings: dict[str, float] = Field(description="Seconds per stage (caption, story, speech, encode).")
    words: int | None = Field(ge=WORDS_MIN, le=WORDS_MAX, description="About how long the story is.")
    seed: int | None = Field(ge=0, le=SEED_MAX)
    style: str | None = Field(
        description="The story style the job runs in (GET /api/v1/styles): the one asked for, else the "
        "default; null when the server has no styles."
    )
    language: str | None = Field(
        description="The language the story is written and spoken in (GET /api/v1/languages): the one asked "
        "for, else the default."
    )
    filename: str | None = Field(description="The upload's file name (display only).")
    attempts: int = Field(
        ge=0, description="Runs started (more than 1 after a worker died; such a job runs alone next)."
    )
    cached: bool = Field(
        description="true: the job succeeded at submit from the result cache (an earlier job with the same "
        "photo, `words`, `seed` and style; no worker ran it)."
    )
    deadline_at: Time | None = Field(
        description="Submitted with a `deadline`: a job no worker has started by then fails with an `error` "
        "starting `expired:`, and never runs."
    )
    retry_of: str | None = Field(description="The failed or canceled job this one retries (POST .../retry).")

    @property
    def finished(self) -> bool:
        return self.status.finished
