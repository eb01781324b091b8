"""The workers' Celery consumer, reconnecting to the broker promptly.

Celery's consumer retries a lost broker connection with kombu's default backoff (2, 4, 6 ... up to
30 s apart), so a worker can sit idle for seconds after Redis is back while wake-ups wait. Job state
lives in the job store, not the broker, so there is nothing to protect by waiting: this consumer
tries every RETRY_MAX seconds at most. Named by `worker_consumer` (shared/jobs/queue.py); only worker
processes import it.
"""

from __future__ import annotations

import functools

from celery.worker.consumer import Consumer

RETRY_FIRST, RETRY_STEP, RETRY_MAX = 0.0, 0.25, 0.5  # seconds between tries: 0, 0.25, 0.5, 0.5, ...


class PromptConsumer(Consumer):
    def ensure_connected(self, conn):
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=RETRY_FIRST, interval_step=RETRY_STEP, interval_max=RETRY_MAX
        )
        return super().ensure_connected(conn)
