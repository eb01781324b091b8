"""What the request handlers share: settings, the job store, storage and the Celery sender.

Built once per app by create_app; nothing here connects at construction (Redis and boto3 clients
connect lazily), so the app starts even while Redis or storage are down and /readyz says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from celery import Celery
from flask import current_app

from shared.jobs import JobStore
from shared.jobs.queue import PUBLISH_RETRY, make_celery, wake
from shared.redis_conn import redis_client
from shared.settings import Settings
from shared.storage import Storage, open_storage
from shared.webhooks import Outbox


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    storage: Storage
    celery: Celery
    _storage_ready: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        # REDIS_URL's server, or the master REDIS_SENTINELS name; no retries: Redis down is a quick 503.
        client = redis_client(settings, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
        celery, ttl = make_celery(settings), settings.job_ttl_seconds
        return cls(
            settings=settings,
            redis=client,
            # Jobs that end here (a cancel, a result-cache hit) get their webhook from the store itself.
            jobs=JobStore(client, ttl, notify=Outbox(celery, client, ttl).notify_finished),
            storage=open_storage(settings.storage_url, settings.public_s3_endpoint_url, settings),
            celery=celery,
        )

    def ensure_storage(self) -> None:
        """Create the bucket/folder once; retried on later requests if storage was down at start."""
        if self._storage_ready:
            return
        with self._lock:
            if not self._storage_ready:
                self.storage.ensure_ready()
                self._storage_ready = True

    def enqueue(self, job_id: str) -> None:
        # Only the id travels: the worker reads the image and parameters from storage and the store.
        wake(self.celery, [job_id], PUBLISH_RETRY, first=True)


def services() -> Services:
    return current_app.extensions["narrator"]
