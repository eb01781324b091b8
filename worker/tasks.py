"""The one Celery task: a wake-up naming a job; the work lives in worker.runner.run_wakeup."""
from __future__ import annotations

from celery import shared_task

from shared.queue import NARRATE_TASK
from worker.context import get_context
from worker.runner import run_wakeup


# Acknowledged when taken: recovery lives in the job store (leases and the reaper), not the broker.
@shared_task(name=NARRATE_TASK, acks_late=False, ignore_result=True)
def narrate_job(job_id: str) -> dict:
    ctx = get_context()
    return run_wakeup(job_id, store=ctx.store, storage=ctx.storage, engine=ctx.engine, heartbeat=ctx.heartbeat,
                      settings=ctx.settings)
