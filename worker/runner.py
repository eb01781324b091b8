"""The job lifecycle on the worker side, as a plain function testable without a broker.

queued -> running (stage caption, story, speech, upload) -> succeeded | failed | canceled.
Idempotent: a task redelivered after a crash runs the job again, overwrites the same keys and
ends in one result; a job that already ended is left alone.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from shared.images import ImageError, load_image
from shared.jobs import JobStatus, JobStore, Stage
from shared.storage import Storage, StorageNotFound, StorageUnavailable

log = logging.getLogger(__name__)

ENDED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


class JobCanceled(Exception):
    """Raised between stages when a client canceled the job."""


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
    if job.status in ENDED:
        return Outcome(job_id, job.status.value)
    # queued -> running, or running -> running when a crashed worker's task is redelivered.
    if not store.transition(job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.RUNNING,
                            stage=Stage.CAPTION.value, started_at=time.time(), error=None):
        current = store.get(job_id)
        return Outcome(job_id, current.status.value if current else "missing")

    stage_now = [Stage.CAPTION.value]

    def on_progress(stage: str, fields: dict) -> None:
        # Every stage boundary publishes what exists so far and notices a cancel.
        current = store.get(job_id)
        if current is None or current.status == JobStatus.CANCELED:
            raise JobCanceled(job_id)
        update = dict(fields)
        if stage in {s.value for s in Stage}:
            update["stage"] = stage_now[0] = stage
        if update:
            store.update(job_id, **update)

    try:
        try:
            data = storage.get(job.input_key)
        except StorageNotFound:
            raise JobFailed("the uploaded image is no longer in storage; please upload it again")
        try:
            image = load_image(data, max_pixels=max_pixels)
        except ImageError as exc:
            raise JobFailed(exc.message)
        narration = engine.narrate(image, words=job.words, seed=job.seed, on_progress=on_progress)
        on_progress(Stage.UPLOAD.value, {})
        key = audio_key(job_id)
        storage.put(key, narration.mp3, content_type="audio/mpeg")
    except JobCanceled:
        return Outcome(job_id, JobStatus.CANCELED.value)
    except JobFailed as exc:
        fail_job(store, job_id, str(exc))
        return Outcome(job_id, JobStatus.FAILED.value)
    except (StorageUnavailable, RedisError):
        raise  # transient: the task retries with backoff
    except SoftTimeLimitExceeded:
        fail_job(store, job_id, "the job took longer than its time limit (JOB_TIME_LIMIT); try a shorter story")
        return Outcome(job_id, JobStatus.FAILED.value)
    except Exception as exc:  # a model error ends this job, not the worker
        log.exception("job %s failed in stage %s", job_id, stage_now[0])
        fail_job(store, job_id, f"the {stage_now[0]} stage failed ({type(exc).__name__}: {exc})")
        return Outcome(job_id, JobStatus.FAILED.value)

    finished = store.transition(
        job_id, {JobStatus.RUNNING}, JobStatus.SUCCEEDED,
        stage=None, finished_at=time.time(), caption=narration.caption, story=narration.story,
        audio_key=key, audio_seconds=round(narration.audio_seconds, 3),
        timings={k: round(v, 4) for k, v in narration.timings.items()},
    )
    if not finished:  # canceled while the MP3 was uploading: leave no orphan audio behind
        storage.delete(key)
        current = store.get(job_id)
        return Outcome(job_id, current.status.value if current else "missing")
    return Outcome(job_id, JobStatus.SUCCEEDED.value)


def fail_job(store: JobStore, job_id: str, message: str) -> None:
    store.transition(job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.FAILED,
                     error=message, finished_at=time.time())
