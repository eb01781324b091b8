"""What a worker process holds: settings, job store, storage, the engine, the heartbeat and the
finisher (the batch finishing in the background, worker/finisher.py), each created once.

Models load in the engine, at worker start-up (worker/app.py), never in the web process.
"""

from __future__ import annotations

import threading

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from shared.jobs import JobStore
from shared.jobs.queue import QUEUE, make_celery, wake
from shared.redis_conn import redis_client
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage
from worker.once import Once

# Ride out a Redis restart or a Sentinel failover (about 10 s of retries) instead of failing the step
# at hand.
REDIS_RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.2), retries=8)
# A reaper's wake-up goes to a Redis that may just be coming back: a few quick tries.
WAKE_RETRY = {"max_retries": 3, "interval_start": 0.5, "interval_step": 1, "interval_max": 2}


class WorkerContext:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._once = Once()

    @property
    def redis(self) -> redis.Redis:
        # REDIS_URL's server, or the master REDIS_SENTINELS name (followed through a failover).
        return self._once(
            "redis",
            lambda: redis_client(
                self.settings,
                socket_connect_timeout=3,
                socket_timeout=10,
                health_check_interval=10,
                retry=REDIS_RETRY,
                retry_on_error=[BusyLoadingError, ConnectionError, TimeoutError],
            ),
        )

    @property
    def publisher(self):
        """Sends this process's messages other than its tasks' own: the reaper's wake-ups, webhooks."""
        return self._once("publisher", lambda: make_celery(self.settings, name="worker-wake"))

    @property
    def store(self) -> JobStore:
        def build():
            from shared.webhooks import Outbox

            ttl = self.settings.job_ttl_seconds
            # Every job that ends here (a run's batch, the reaper's failures) gets its webhook from
            # the store, delivered by the light webhooks worker, never here.
            return JobStore(self.redis, ttl, notify=Outbox(self.publisher, self.redis, ttl).notify_finished)

        return self._once("store", build)

    @property
    def storage(self) -> Storage:
        # No round trip here: the web creates the bucket, and a job retries storage while it is down.
        return self._once("storage", lambda: open_storage(self.settings.storage_url, settings=self.settings))

    @property
    def engine(self):
        from worker.engine import Engine  # torch is imported here, in worker processes only

        return self._once("engine", lambda: Engine(self.settings))

    @property
    def heartbeat(self):
        from worker.heartbeat import Heartbeat

        def build():
            return Heartbeat(
                self.store,
                self.settings,
                wake=lambda ids: wake(self.publisher, ids, WAKE_RETRY),
                queue_length=lambda: self.redis.llen(QUEUE),
            )

        return self._once("heartbeat", build)

    @property
    def encodes_in_background(self) -> bool:
        """ENCODE_IN_BACKGROUND; auto: on a GPU only."""
        mode = self.settings.encode_in_background
        return self.engine.device.type == "cuda" if mode == "auto" else mode == "on"

    @property
    def finisher(self):
        from worker.finisher import Finisher

        return self._once("finisher", Finisher)


_lock = threading.Lock()
_context: WorkerContext | None = None


def get_context() -> WorkerContext:
    global _context
    with _lock:
        if _context is None:
            _context = WorkerContext(get_settings())
        return _context
