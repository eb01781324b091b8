"""What a worker process holds: settings, job store, storage and the engine, each created once.

Models load lazily inside the engine on the first job, never at import or in the web process.
"""
from __future__ import annotations

import threading

import redis

from shared.jobs import JobStore
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage
from worker.once import Once


class WorkerContext:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._once = Once()

    @property
    def store(self) -> JobStore:
        return self._once("store", lambda: JobStore(
            redis.Redis.from_url(self.settings.redis_url, socket_timeout=10, health_check_interval=30),
            ttl_seconds=self.settings.job_ttl_seconds))

    @property
    def storage(self) -> Storage:
        def build() -> Storage:
            storage = open_storage(self.settings.storage_url)
            storage.ensure_ready()  # a StorageUnavailable here leaves nothing cached: the retry tries again
            return storage

        return self._once("storage", build)

    @property
    def engine(self):
        from worker.engine import Engine  # torch is imported here, in worker processes only

        return self._once("engine", lambda: Engine(self.settings))


_lock = threading.Lock()
_context: WorkerContext | None = None


def get_context() -> WorkerContext:
    global _context
    with _lock:
        if _context is None:
            _context = WorkerContext(get_settings())
        return _context
