"""The job lifecycle on the worker side, as a plain function testable without a broker.

queued -> running (stage caption, story, speech, upload) -> succeeded | failed | canceled.
Idempotent: a task redelivered after a crash runs the job again, overwrites the same keys and
ends in one result; a job that already ended is left alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from shared.images import ImageError, load_image
from shared.jobs import JobStatus, JobStore, Stage
from shared.storage import Storage, StorageNotFound, StorageUnavailable

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """Raised at a stage boundary when a client canceled the job."""


class JobFailed(Exception):
    """A failure the user can act on; its message becomes the job's `error`."""


@dataclass
class Outcome:
    job_id: str
    status: str


def audio_key(job_id: str) -> str:
    return f"audio/{job_id}.mp3"


def run_job(job_id: str, *, store: JobStore, storage: Storage, engine, max_pixels: int | None = None) -> Outcome:
    job = store.get(job_id)
    if job is None:
        log.warning("job %s not found (expired or never created); dropping the message", job_id)
        return Outcome(job_id, "missing")
    # queued -> running, or running -> running when a crashed worker's task is redelivered.
    if not store.claim(job_id, allowed_from=(JobStatus.QUEUED, JobStatus.RUNNING)):
        return Outcome(job_id, job.status.value)  # already ended: nothing to redo

    stage_now = Stage.CAPTION

    def on_progress(stage: str, fields: dict) -> None:
        # Each stage boundary publishes what exists so far (caption, story) and notices a cancel.
        nonlocal stage_now
        stage_now = Stage(stage)
        if not store.progress(job_id, stage_now, **fields):
            raise JobCanceled(job_id)

    try:
        narration = engine.narrate(read_image(storage, job.input_key, max_pixels),
                                   words=job.words, seed=job.seed, on_progress=on_progress)
        on_progress(Stage.UPLOAD.value, {"story": narration.story})
        key = audio_key(job_id)
        storage.put(key, narration.mp3, content_type="audio/mpeg")
    except JobCanceled:
        return Outcome(job_id, JobStatus.CANCELED.value)
    except JobFailed as exc:
        return fail_job(store, job_id, str(exc))
    except (StorageUnavailable, RedisError):
        raise  # transient: the task retries with backoff
    except SoftTimeLimitExceeded:
        return fail_job(store, job_id, "the job took longer than its time limit (JOB_TIME_LIMIT)")
    except Exception as exc:  # a model error ends this job, not the worker
        log.exception("job %s failed in stage %s", job_id, stage_now.value)
        return fail_job(store, job_id, f"the {stage_now.value} stage failed ({type(exc).__name__}: {exc})")

    timings = {name: round(seconds, 4) for name, seconds in narration.timings.items()}
    if store.succeed(job_id, key, round(narration.audio_seconds, 3), caption=narration.caption,
                     story=narration.story, timings=timings):
        return Outcome(job_id, JobStatus.SUCCEEDED.value)
    storage.delete(key)  # canceled while the MP3 was uploading: leave no orphan audio behind
    return Outcome(job_id, JobStatus.CANCELED.value)


def read_image(storage: Storage, key: str, max_pixels: int | None):
    try:
        data = storage.get(key)
    except StorageNotFound:
        raise JobFailed("the uploaded image is no longer in storage; please upload it again")
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise JobFailed(exc.message)


def fail_job(store: JobStore, job_id: str, message: str) -> Outcome:
    store.fail(job_id, message)
    return Outcome(job_id, JobStatus.FAILED.value)
