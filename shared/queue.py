"""Celery configuration shared by the web front end (which only sends) and the workers.

The web process builds the same Celery app to enqueue by task name, so it never imports the
worker package (and with it torch).
"""
from __future__ import annotations

from celery import Celery

from shared.settings import Settings

NARRATE_TASK = "narrate_job"
QUEUE = "narrate"


def celery_config(settings: Settings) -> dict:
    # A job may wait behind others and then run up to its time limit; the visibility timeout must
    # exceed that, or Redis redelivers a job that is still running to a second worker.
    visibility = max(3600, settings.job_time_limit * 3)
    return {
        "broker_url": settings.redis_url,
        "result_backend": None,  # job state lives in the job store, not in Celery results
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.job_time_limit + 60,
        "task_soft_time_limit": settings.job_time_limit,
        "broker_transport_options": {"visibility_timeout": visibility},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings, name: str = "narrator") -> Celery:
    app = Celery(name)
    app.config_from_object(celery_config(settings))
    return app
