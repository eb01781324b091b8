"""Which workers are alive, from their heartbeats, and the last model-load error: what /readyz shows.

Each worker keeps `worker:<id>` (its state), expiring one lease after its last heartbeat, and its id
in the set `workers:live`. Being alive is having that key: its expiry runs on Redis's clock, so a
host whose clock is off is still counted right (no host compares its own time with another's). A
worker that stops beating drops out by itself; the next reader removes its id from the set.
"""

from __future__ import annotations

import json
import time

WORKERS = "workers:live"
MODEL_ERROR = "workers:model_error"
MODEL_ERROR_TTL = 7 * 24 * 3600
_FORGET_LAPSED = """
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[1], ARGV[i - 1]) end
end
"""


def presence_key(worker: str) -> str:
    return f"worker:{worker}"


def announce(redis_client, worker: str, info: dict, ttl: float) -> None:
    pipe = redis_client.pipeline(transaction=False)
    pipe.set(presence_key(worker), json.dumps({**info, "id": worker}), px=int(ttl * 1000))
    pipe.sadd(WORKERS, worker)
    pipe.execute()


def retire(redis_client, worker: str) -> None:
    """A worker that stops cleanly leaves at once instead of when its heartbeat lapses."""
    pipe = redis_client.pipeline(transaction=False)
    pipe.delete(presence_key(worker))
    pipe.srem(WORKERS, worker)
    pipe.execute()


def live_workers(redis_client) -> list[dict]:
    ids = sorted(i.decode() if isinstance(i, bytes) else i for i in redis_client.smembers(WORKERS))
    if not ids:
        return []
    records = redis_client.mget([presence_key(i) for i in ids])
    lapsed = [i for i, raw in zip(ids, records, strict=True) if raw is None]
    if lapsed:  # checked again inside Redis: one that announced since then stays
        redis_client.eval(_FORGET_LAPSED, len(lapsed) + 1, WORKERS, *map(presence_key, lapsed), *lapsed)
    return [json.loads(raw) for raw in records if raw]


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
