"""Celery configuration shared by the web front end (which only sends) and the workers.

Messages are wake-ups: each names a job id, and the worker that takes one acknowledges it at once
and claims queued jobs from the job store (that job first). Nothing depends on a message surviving:
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
        "broker_transport_options": broker_transport_options(settings),
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings, name: str = "narrator") -> Celery:
    app = Celery(name)
    app.config_from_object(celery_config(settings))
    return app


def wake(celery: Celery, job_ids: Iterable[str], retry_policy: dict | None = None) -> None:
    """Send one wake-up per job. The web passes each new job's id as the message id too."""
    for job_id in job_ids:
        celery.send_task(NARRATE_TASK, args=[job_id], retry=retry_policy is not None, retry_policy=retry_policy or {})
