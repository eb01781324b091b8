"""The job as clients see it: what GET /api/v1/jobs/<id> answers and a webhook's `data` carries.

Both come from one model, narrator_client.job.Job (the client parses the same model, and the OpenAPI
document's `Job` schema is generated from it); here it is built from a stored Job.
"""

from __future__ import annotations

from narrator_client.job import Job as PublicJob
from shared.jobs.schema import Job, JobStatus

PUBLIC_FIELDS = tuple(PublicJob.model_fields)  # what clients see of a job, in this order
AUDIO_PATH = "/api/v1/jobs/{id}/audio"
SUBTITLES_PATH = "/api/v1/jobs/{id}/subtitles.vtt"


def public_model(job: Job, audio_url: str | None, subtitles_url: str | None) -> PublicJob:
    """The job as clients see it, with the URLs the caller made (the API's come from its request)."""
    data = job.to_dict()
    data["audio_url"], data["subtitles_url"] = audio_url, subtitles_url
    return PublicJob.model_validate({name: data.get(name) for name in PUBLIC_FIELDS})


def public_job(job: Job, base_url: str | None = None) -> dict:
    """The job as GET /api/v1/jobs/<id> shows it, JSON-ready, without a request: `audio_url` (and
    `subtitles_url`) are absolute under `base_url` (PUBLIC_BASE_URL) once the job succeeded, None
    without a base URL."""
    audio = subtitles = None
    if base_url and JobStatus(job.status) == JobStatus.SUCCEEDED and job.audio_key:
        audio = base_url.rstrip("/") + AUDIO_PATH.format(id=job.id)
        if job.subtitles_key:
            subtitles = base_url.rstrip("/") + SUBTITLES_PATH.format(id=job.id)
    return public_model(job, audio, subtitles).model_dump(mode="json")
