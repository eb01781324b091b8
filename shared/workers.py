"""Which workers are alive, from their heartbeats, and the last model-load error: what /readyz shows.

Each worker writes `worker:<id>` (its state, expiring with its lease) and its expiry in the sorted
set `workers` at every heartbeat; a worker that stops beating drops out of both by itself.
"""

from __future__ import annotations

import json
import time

WORKERS = "workers"
MODEL_ERROR = "workers:model_error"
MODEL_ERROR_TTL = 7 * 24 * 3600


def announce(redis_client, worker: str, info: dict, ttl: float) -> None:
    expires = time.time() + ttl
    pipe = redis_client.pipeline(transaction=False)
    pipe.set(f"worker:{worker}", json.dumps({**info, "id": worker, "seen": time.time()}), px=int(ttl * 1000))
    pipe.zadd(WORKERS, {worker: expires})
    pipe.zremrangebyscore(WORKERS, "-inf", time.time())
    pipe.execute()


def retire(redis_client, worker: str) -> None:
    """A worker that stops cleanly leaves at once instead of when its heartbeat lapses."""
    pipe = redis_client.pipeline(transaction=False)
    pipe.delete(f"worker:{worker}")
    pipe.zrem(WORKERS, worker)
    pipe.execute()


def live_workers(redis_client) -> list[dict]:
    ids = [i.decode() if isinstance(i, bytes) else i for i in redis_client.zrangebyscore(WORKERS, time.time(), "+inf")]
    if not ids:
        return []
    return [json.loads(raw) for raw in redis_client.mget([f"worker:{i}" for i in ids]) if raw]


def worker_counts(redis_client) -> dict[str, int]:
    """Counts only (what /readyz and /metrics show): live, ready (models loaded: idle or busy), busy."""
    live = live_workers(redis_client)
    return {
        "live": len(live),
        "ready": sum(w.get("state") in ("ready", "busy") for w in live),
        "busy": sum(w.get("state") == "busy" for w in live),
    }


def record_model_error(redis_client, worker: str, message: str) -> None:
    record = {"worker": worker, "message": message, "at": time.time()}
    redis_client.set(MODEL_ERROR, json.dumps(record), ex=MODEL_ERROR_TTL)


def last_model_error(redis_client) -> dict | None:
    raw = redis_client.get(MODEL_ERROR)
    return json.loads(raw) if raw else None
