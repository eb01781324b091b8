"""What a client can do to a finished (or unwanted) job besides reading it: erase it, or run it again.

Both are use cases of the API and the pages: `erase` (DELETE /api/v1/jobs/<id>, the page's Delete
button) and `retry` (POST /api/v1/jobs/<id>/retry).
"""

from __future__ import annotations

from shared import result_cache
from shared.jobs import Job, JobStatus, files, new_job_id
from shared.storage import StorageNotFound
from web.jobs.submit import record_and_queue
from web.middleware.errors import AppError

RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELED)


def erase(svc, job: Job) -> None:
    """Cancel the job if it waits or runs, then delete its photo, every MP3 and VTT any run of it
    wrote, the result-cache entry that serves those, and last its record. Storage goes first: if it
    fails, the record is still there and the client's next DELETE finishes the work (a run that was
    still going finds its job gone and keeps none of its files)."""
    if not JobStatus(job.status).finished:
        svc.jobs.cancel(job.id)
    keys = {job.input_key or files.input_key(job.id)}
    for prefix in files.run_prefixes(job.id):
        keys.update(svc.storage.list(prefix))
    for key in sorted(keys):
        svc.storage.delete(key)
    cache_key = result_cache.job_key(svc.settings, job)
    if cache_key is not None:
        entry = result_cache.lookup(svc.redis, cache_key)
        if entry is not None and entry.get("audio_key") in keys:
            svc.redis.delete(result_cache.redis_key(cache_key))
    svc.jobs.delete(job.id)


def retry(svc, old: Job) -> Job:
    """A new job with the failed or canceled job's photo and fields (`retry_of` names the old one);
    409 not_retryable for any other status, or when the photo is no longer stored."""
    if JobStatus(old.status) not in RETRYABLE:
        raise AppError(
            409, "not_retryable", f"Only a failed or canceled job can be retried; this one {old.status.value}."
        )
    try:
        photo = svc.storage.get(old.input_key or files.input_key(old.id))
    except StorageNotFound:
        raise AppError(409, "not_retryable", "The photo of this job is no longer stored: submit it again.") from None
    job = Job(
        id=new_job_id(),
        words=old.words,
        seed=old.seed,
        style=old.style,
        content_type=old.content_type,
        filename=old.filename,
        owner=old.owner,
        lane=old.lane,
        webhook=old.webhook,
        image_sha256=old.image_sha256,
        retry_of=old.id,
    )
    job.input_key = files.input_key(job.id)  # its own copy: erasing either job leaves the other whole
    svc.storage.put(job.input_key, photo, old.content_type)
    record_and_queue(svc, job)
    return job
