"""The outbox: when a job ends, one `deliver_webhook` message per job and final event.

The job store calls `Outbox.notify_finished` from its ending transitions (shared/jobs/store.py:
finish, cancel, reap, a job created already finished), with the records as it wrote them. Each
message is guarded by a Redis marker set with HSETNX first, so telling it twice sends nothing more.
Publishing is all the ending process does: the light webhooks worker (shared/webhooks/worker.py)
makes the HTTP requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.jobs.queue import PUBLISH_RETRY
from shared.jobs.schema import Job, JobStatus

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = "webhooks"
DELIVER_TASK = "deliver_webhook"
EVENTS = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed", JobStatus.CANCELED: "job.canceled"}


def webhook_id(job_id: str, event: str) -> str:
    """The same for every attempt of one job's event; no '.' (the spec's signed content is
    `id.timestamp.body`), and job ids are [A-Za-z0-9_-]."""
    return f"msg_{job_id}_{event.rsplit('.', 1)[-1]}"


def delivery_key(job_id: str, event: str) -> str:
    """A hash per job and event: state (queued | delivering | delivered | failed), attempts, last."""
    return f"webhook:{job_id}:{event}"


@dataclass(frozen=True)
class Outbox:
    """Publishes deliveries through `celery` (any app on the broker; only `send_task` is used), with
    its markers in `redis` for `ttl_seconds` (the job records' lifetime)."""

    celery: Any
    redis: Any
    ttl_seconds: int

    def notify_finished(self, jobs: Iterable[Job]) -> list[str]:
        """For each job that has a webhook and has finished, enqueue its delivery, once: a job
        already enqueued is skipped (HSETNX marker). Nothing is read again. Never raises: a job
        whose message could not be published is logged and its marker removed, so a later call can
        enqueue it. Returns the ids enqueued."""
        sent = []
        for job in jobs:
            try:
                if not job.webhook or not JobStatus(job.status).finished:
                    continue
                event = EVENTS[JobStatus(job.status)]
                key = delivery_key(job.id, event)
                pipe = self.redis.pipeline(transaction=True)
                pipe.hsetnx(key, "state", "queued")
                pipe.expire(key, self.ttl_seconds)
                if not pipe.execute()[0]:
                    continue  # enqueued before
                try:
                    self.celery.send_task(
                        DELIVER_TASK,
                        args=[job.id, event],
                        queue=WEBHOOK_QUEUE,
                        task_id=webhook_id(job.id, event),
                        retry=True,
                        retry_policy=PUBLISH_RETRY,
                    )
                except Exception:
                    self.redis.delete(key)
                    raise
                sent.append(job.id)
            except Exception as exc:  # a webhook must never break the path that ended the job
                log.warning("could not enqueue the webhook of job %s: %s: %s", job.id, type(exc).__name__, exc)
        return sent
