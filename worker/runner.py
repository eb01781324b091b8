"""The job lifecycle on the worker side, as plain functions testable without a broker.

queued -> running (stage caption, story, speech, upload) -> succeeded | failed | canceled.

A message names one job. The worker claims it, then fills its batch with other queued jobs
(their own messages, arriving later, find them finished or leased and wait), runs the batch and
publishes each job's caption and story as soon as they exist. Idempotent: a message redelivered
after a crash runs its job again once the dead worker's lease has expired, overwrites the same
keys and ends in one result; a job that already ended is left alone.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from shared.images import ImageError, load_image
from shared.jobs import JobStatus, JobStore, Stage
from shared.storage import Storage, StorageError, StorageNotFound, StorageUnavailable

log = logging.getLogger(__name__)
TIME_LIMIT_MESSAGE = "the job took longer than its time limit (JOB_TIME_LIMIT)"


class JobCanceled(Exception):
    """Raised at a stage boundary when every job of the batch was canceled."""


class JobFailed(Exception):
    """A failure the user can act on; its message becomes the job's `error`."""


@dataclass
class Outcome:
    job_id: str
    status: str  # a JobStatus value, "missing", or "leased" (another worker holds it)
    retry_in: float = 0.0


def audio_key(job_id: str) -> str:
    return f"audio/{job_id}.mp3"


def worker_id() -> str:
    # Per thread: two threads of one process must not take each other's claims for their own.
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def run_job(job_id: str, *, store: JobStore, storage: Storage, engine, max_pixels: int | None = None,
            batch_size: int = 1, lease_seconds: float = 900) -> Outcome:
    me, now = worker_id(), time.time()
    job = store.get(job_id)
    if job is None:
        log.warning("job %s not found (expired or never created); dropping the message", job_id)
        return Outcome(job_id, "missing")
    if job.status.finished:
        return Outcome(job_id, job.status.value)
    if job.leased_elsewhere(me, now):  # a live worker has it in a batch: look again later
        return Outcome(job_id, "leased", retry_in=job.lease_until - now)
    # queued -> running, or running -> running when a dead worker's lease has expired.
    if not store.claim(job_id, (JobStatus.QUEUED, JobStatus.RUNNING), worker=me, lease_seconds=lease_seconds):
        return _not_claimed(store, job_id)
    batch = [job_id]
    try:
        batch += store.claim_queued(batch_size - 1, worker=me, lease_seconds=lease_seconds)
        if len(batch) > 1:
            log.info("running a batch of %d jobs: %s", len(batch), ", ".join(batch))
            for other in batch:
                store.update(other, batch_size=len(batch))
        outcomes = run_batch(batch, store=store, storage=storage, engine=engine, max_pixels=max_pixels,
                             lease_seconds=lease_seconds, worker=me)
    except (StorageUnavailable, RedisError):
        for claimed in batch:  # back to the queue: each job's own message (retried) runs it again
            _quietly(store.release, claimed, me)
        raise
    except Exception as exc:  # whatever else broke (the time limit too), no claimed job is left running
        log.exception("batch %s failed", ", ".join(batch))
        message = (TIME_LIMIT_MESSAGE if isinstance(exc, SoftTimeLimitExceeded)
                   else f"the job failed ({type(exc).__name__}: {exc})")
        for claimed in batch:
            _quietly(fail_job, store, claimed, message, me)
        return Outcome(job_id, JobStatus.FAILED.value)
    return outcomes[job_id]


def _not_claimed(store: JobStore, job_id: str) -> Outcome:
    # Lost a race: another worker claimed it (or released it again) between our read and claim.
    # Unless it has ended, keep the message alive so a crash of that worker cannot lose the job.
    current = store.get(job_id)
    if current is None or current.status.finished:
        return Outcome(job_id, current.status.value if current else "missing")
    return Outcome(job_id, "leased", retry_in=max(1.0, (current.lease_until or 0) - time.time()))


def run_batch(job_ids: list[str], *, store: JobStore, storage: Storage, engine, max_pixels: int | None,
              lease_seconds: float, worker: str) -> dict[str, Outcome]:
    """Run claimed jobs through the engine as one batch; every job ends in its own outcome."""
    outcomes: dict[str, Outcome] = {}
    jobs, images = [], []
    for job_id in job_ids:
        job = store.get(job_id)
        if job is None:  # expired between claim and now
            outcomes[job_id] = Outcome(job_id, "missing")
            continue
        try:
            images.append(read_image(storage, job.input_key, max_pixels))
            jobs.append(job)
        except JobFailed as exc:
            outcomes[job_id] = fail_job(store, job_id, str(exc), worker)
    active = {job.id for job in jobs}
    stage_now = Stage.CAPTION

    def publish(stage: str, fields: list[dict]) -> None:
        # Each stage boundary shows what exists so far (caption, story) and notices cancels.
        nonlocal stage_now
        stage_now = Stage(stage)
        for job, changes in zip(jobs, fields):
            if job.id in active and not store.progress(job.id, stage_now, claimant=worker,
                                                       lease_until=time.time() + lease_seconds, **changes):
                active.discard(job.id)  # canceled, or taken over by a worker that found our lease expired
                outcomes[job.id] = Outcome(job.id, JobStatus.CANCELED.value)
        if not active:
            raise JobCanceled()

    try:
        if jobs:
            narrations = engine.narrate_batch(images, words=[j.words for j in jobs], seeds=[j.seed for j in jobs],
                                              on_progress=publish)
            publish(Stage.UPLOAD.value, [{} for _ in jobs])
            for job, narration in zip(jobs, narrations):
                if job.id in active:
                    outcomes[job.id] = finish_job(store, storage, job.id, narration, worker)
    except JobCanceled:
        pass
    except (StorageUnavailable, RedisError):
        raise  # transient: the task retries with backoff
    except SoftTimeLimitExceeded:
        for job_id in active - set(outcomes):
            outcomes[job_id] = fail_job(store, job_id, TIME_LIMIT_MESSAGE, worker)
    except Exception as exc:  # a model error ends these jobs, not the worker
        log.exception("jobs %s failed in stage %s", ", ".join(active), stage_now.value)
        for job_id in active - set(outcomes):
            outcomes[job_id] = fail_job(store, job_id,
                                        f"the {stage_now.value} stage failed ({type(exc).__name__}: {exc})", worker)
    return outcomes


def finish_job(store: JobStore, storage: Storage, job_id: str, narration, worker: str) -> Outcome:
    key = audio_key(job_id)
    storage.put(key, narration.mp3, content_type="audio/mpeg")
    timings = {name: round(seconds, 4) for name, seconds in narration.timings.items()}
    if store.succeed(job_id, key, round(narration.audio_seconds, 3), claimant=worker, caption=narration.caption,
                     story=narration.story, timings=timings, lease_until=None):
        return Outcome(job_id, JobStatus.SUCCEEDED.value)
    current = store.get(job_id)
    if current is not None and current.status == JobStatus.CANCELED:
        storage.delete(key)  # canceled while the MP3 was uploading: leave no orphan audio behind
        return Outcome(job_id, JobStatus.CANCELED.value)
    # Another run of the same job owns it now (and writes the same key): leave its audio alone.
    return Outcome(job_id, current.status.value if current else "missing")


def read_image(storage: Storage, key: str, max_pixels: int | None):
    try:
        data = storage.get(key)
    except StorageNotFound:
        raise JobFailed("the uploaded image is no longer in storage; please upload it again")
    except StorageUnavailable:
        raise  # transient: retried
    except StorageError as exc:  # e.g. access denied: retrying will not help
        raise JobFailed(f"storage refused the uploaded image ({exc})")
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise JobFailed(exc.message)


def fail_job(store: JobStore, job_id: str, message: str, worker: str | None = None) -> Outcome:
    store.fail(job_id, message, claimant=worker, lease_until=None)
    return Outcome(job_id, JobStatus.FAILED.value)


def _quietly(action, *args) -> None:
    try:
        action(*args)
    except (StorageUnavailable, RedisError):
        pass
