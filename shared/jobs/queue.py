"""Celery configuration shared by the web front end (which only sends) and the workers.

Messages are wake-ups: each names a job id, and the worker that takes one acknowledges it at once
and claims queued jobs from the job store (that job first); the claim drops the batch's other
wake-ups still waiting (shared/jobs/lua/claim.lua), spent now. Nothing depends on a message surviving:
the job record in Redis is the truth, and the workers' reaper sends a new wake-up for any queued job
whose message was lost. So there are no late acks, no visibility timeouts to tune, no parked retries.

The web process builds the same Celery app to enqueue by task name, so it never imports the
worker package (and with it torch).
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from shared.redis_conn import broker_transport_options, broker_url
from shared.settings import Settings

NARRATE_TASK = "narrate_job"
QUEUE = "narrate"  # also the Redis list kombu keeps the waiting messages in
# For a sender that must not hang on a dead broker (a web request, a finishing job): a few quick
# tries, then the caller's error handling.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": broker_url(settings),  # REDIS_URL, or its Sentinels (shared/redis_conn.py)
        "result_backend": None,  # job state lives in the job store, not in Celery results
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_acks_late": False,  # a wake-up is acknowledged when taken (see above)
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker outlives any Redis outage
        "worker_consumer": "shared.jobs.reconnect:PromptConsumer",  # back within a second of Redis
        "broker_transport_options": broker_transport_options(settings),
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings, name: str = "narrator") -> Celery:
    app = Celery(name)
    app.config_from_object(celery_config(settings))
    return app


def wake(celery: Celery, job_ids: Iterable[str], retry_policy: dict | None = None, first: bool = False) -> None:
    """Send one wake-up per job. `first`: the job's first wake-up (the web's, at submit), which
    carries the job's id as its message id too, so broker-side tools show which job it is."""
    for job_id in job_ids:
        celery.send_task(
            NARRATE_TASK,
            args=[job_id],
            task_id=job_id if first else None,
            retry=retry_policy is not None,
            retry_policy=retry_policy or {},
        )
