"""The webhooks worker: `celery -A shared.webhooks.worker worker -Q webhooks`.

Light: it needs only REDIS_URL (and REDIS_SENTINELS with Sentinel; plus PUBLIC_BASE_URL,
WEBHOOK_SECRET, WEBHOOK_ALLOW_PRIVATE and the WEBHOOK_* retry settings) and never imports torch,
Flask or the worker package, so it runs next to the web app, with the default prefork pool, as many
processes as receivers deserve. Whoever ends a job only publishes its message
(shared/webhooks/outbox.py): a slow receiver costs them nothing.

Each message is one job's final event. An attempt that should be retried (a timeout, a connection
error, 408, 429, 5xx) is republished with a countdown that doubles each time
(WEBHOOK_RETRY_SECONDS, capped at WEBHOOK_RETRY_MAX_SECONDS), up to WEBHOOK_MAX_ATTEMPTS; the
webhook-id stays the same. Messages are acknowledged after the attempt (acks_late), so a worker that
dies mid-attempt leaves its message to be delivered again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from shared.jobs import JobStore
from shared.jobs.queue import make_celery
from shared.redis_conn import redis_client
from shared.settings import Settings, get_settings
from shared.webhooks.delivery import deliver, retry_delay
from shared.webhooks.outbox import DELIVER_TASK, WEBHOOK_QUEUE

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("webhooks")

app = make_celery(get_settings(), name="webhooks")
app.conf.update(
    task_default_queue=WEBHOOK_QUEUE,  # `-Q webhooks` may be left out; narrate messages are never taken
    task_routes={DELIVER_TASK: {"queue": WEBHOOK_QUEUE}},
)
celery = app


@dataclass
class Context:
    settings: Settings
    redis: redis.Redis
    store: JobStore


_context: Context | None = None


def get_context() -> Context:
    """Built lazily in the process that runs the tasks (after a prefork pool forks)."""
    global _context
    if _context is None:
        settings = get_settings()
        client = redis_client(settings, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30)
        # No notifier: this worker reads jobs, it never ends one.
        _context = Context(settings, client, JobStore(client, settings.job_ttl_seconds))
    return _context


@app.task(
    name=DELIVER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=None
)
def deliver_webhook(self, job_id: str, event: str) -> None:
    ctx = get_context()
    try:
        wait = deliver(ctx.redis, ctx.store, ctx.settings, job_id, event)
    except redis.RedisError as exc:  # the job store is down: try again later, same series
        wait = retry_delay(ctx.settings, self.request.retries + 1)
        log.warning("webhook of job %s: Redis unavailable (%s); retrying in %.0fs", job_id, exc, wait)
    if wait is not None:
        raise self.retry(countdown=wait, max_retries=None)
