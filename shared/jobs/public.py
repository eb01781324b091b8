"""The job as clients see it: what GET /api/v1/jobs/<id> answers and a webhook's `data` carries."""

from __future__ import annotations

from shared.jobs.schema import Job, JobStatus

# What GET /api/v1/jobs/<id> shows of a job, in this order.
PUBLIC_FIELDS = (
    "id",
    "status",
    "stage",
    "created_at",
    "started_at",
    "finished_at",
    "caption",
    "story",
    "audio_url",
    "audio_seconds",
    "subtitles_url",
    "error",
    "timings",
    "words",
    "seed",
    "style",
    "filename",
    "attempts",
    "cached",
)
AUDIO_PATH = "/api/v1/jobs/{id}/audio"
SUBTITLES_PATH = "/api/v1/jobs/{id}/subtitles.vtt"


def public_job(job: Job, base_url: str | None = None) -> dict:
    """The job as GET /api/v1/jobs/<id> shows it, without a request: `audio_url` (and
    `subtitles_url`) are absolute under `base_url` (PUBLIC_BASE_URL) once the job succeeded, None
    without a base URL."""
    data = job.to_dict()
    data["audio_url"] = data["subtitles_url"] = None
    if base_url and JobStatus(job.status) == JobStatus.SUCCEEDED and job.audio_key:
        data["audio_url"] = base_url.rstrip("/") + AUDIO_PATH.format(id=job.id)
        if job.subtitles_key:
            data["subtitles_url"] = base_url.rstrip("/") + SUBTITLES_PATH.format(id=job.id)
    return {name: data.get(name) for name in PUBLIC_FIELDS}
