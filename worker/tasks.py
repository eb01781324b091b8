"""Thin Celery tasks: the message is a job id; the work lives in worker.runner.run_job."""
from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from shared.queue import NARRATE_TASK
from shared.storage import StorageUnavailable
from worker.context import get_context
from worker.limits import time_limit
from worker.runner import TIME_LIMIT_MESSAGE, fail_job, run_job, worker_id

log = logging.getLogger(__name__)
TRANSIENT = (StorageUnavailable, RedisError, ConnectionError)
TRANSIENT_RETRIES = 6  # 1 + 2 + 4 + 8 + 16 + 32 s of backoff before a job fails
# Publishing the retried message goes to the same Redis that may just have failed: keep trying for
# about a minute, since a message that cannot be republished is dropped.
PUBLISH_RETRY = {"max_retries": 12, "interval_start": 1, "interval_step": 2, "interval_max": 10}


# max_retries=None: a message waiting on another worker's batch is retried until that job ends;
# transient errors count their own retries in the message (the job id and a counter only).
@shared_task(name=NARRATE_TASK, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def narrate_job(self, job_id: str, transient_retries: int = 0) -> str:
    ctx = get_context()
    try:
        ctx.engine.load()  # once per process; the first job's load does not count against its limit
    except Exception as exc:
        log.exception("could not load the models")
        fail_job(ctx.store, job_id, f"the worker could not load its models ({type(exc).__name__}: {exc})",
                 worker_id())
        raise
    try:
        with time_limit(ctx.settings.job_time_limit):
            outcome = run_job(job_id, store=ctx.store, storage=ctx.storage, engine=ctx.engine,
                              max_pixels=ctx.settings.max_image_pixels, batch_size=ctx.settings.worker_batch_size,
                              lease_seconds=ctx.settings.job_time_limit + 120)
    except SoftTimeLimitExceeded:  # fired outside the stages (claiming, bookkeeping)
        fail_job(ctx.store, job_id, TIME_LIMIT_MESSAGE, worker_id())
        return "failed"
    except TRANSIENT as exc:
        if transient_retries >= TRANSIENT_RETRIES:
            log.error("job %s: giving up after %d retries: %s", job_id, transient_retries, exc)
            try:
                fail_job(ctx.store, job_id, "storage stayed unreachable; please try again later", worker_id())
            except TRANSIENT:
                pass
            raise
        delay = 2 ** transient_retries
        log.warning("job %s: transient error (%s); retrying in %ss", job_id, exc, delay)
        raise self.retry(kwargs={"job_id": job_id, "transient_retries": transient_retries + 1}, countdown=delay,
                         retry_policy=PUBLISH_RETRY)
    if outcome.status == "leased":
        # Another worker runs it in a batch. Keep this message alive until the job ends, so a crash
        # of that worker (its lease then expires) never loses the job. One look after the lease
        # ends is enough: a finished job then acks at once.
        raise self.retry(countdown=min(1800.0, outcome.retry_in + 1), retry_policy=PUBLISH_RETRY)
    return outcome.status
