"""What a worker process holds: settings, job store, storage and the engine, created once.

Models load lazily inside the engine on the first job, never at import or in the web process.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import redis

from shared.jobs import JobStore
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage


@dataclass
class WorkerContext:
    settings: Settings

    @cached_property
    def store(self) -> JobStore:
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10, health_check_interval=30)
        return JobStore(client, ttl_seconds=self.settings.job_ttl_seconds)

    @cached_property
    def storage(self) -> Storage:
        storage = open_storage(self.settings.storage_url)
        storage.ensure_ready()
        return storage

    @cached_property
    def engine(self):
        from worker.engine import Engine  # torch is imported here, in worker processes only

        return Engine(self.settings)


_lock = threading.Lock()
_context: WorkerContext | None = None


def get_context() -> WorkerContext:
    global _context
    with _lock:
        if _context is None:
            _context = WorkerContext(get_settings())
        return _context
