"""The one Celery task: a wake-up naming a job; the work lives in worker.runner.run_wakeup.

The task runs a batch's GPU part and hands its finishing to the worker's finisher
(worker/finisher.py), so it returns while the batch's MP3s are still being uploaded (and on a GPU,
encoded: ENCODE_IN_BACKGROUND): its answer shows those jobs as "finishing" (the finisher logs
"finished {...}" when they end).
"""

from __future__ import annotations

from celery import shared_task

from shared.jobs.queue import NARRATE_TASK
from worker.context import get_context
from worker.runner import run_wakeup


# Acknowledged when taken: recovery lives in the job store (leases and the reaper), not the broker.
@shared_task(name=NARRATE_TASK, acks_late=False, ignore_result=True)
def narrate_job(job_id: str) -> dict:
    ctx = get_context()
    return run_wakeup(
        job_id,
        store=ctx.store,
        storage=ctx.storage,
        engine=ctx.engine,
        heartbeat=ctx.heartbeat,
        settings=ctx.settings,
        finisher=ctx.finisher,
        encode_in_background=ctx.encodes_in_background,
    )
