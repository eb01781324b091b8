"""Job records in Redis: one hash per job (`job:<id>`, expiring) plus a sorted-set index by creation time.

Status changes go through `transition`, a Lua script that checks the current status and writes in one
step, so a worker finishing a job and a user canceling it cannot both win. The Job record and its
encoding live in job_schema.py.
"""
from __future__ import annotations

import time
from dataclasses import fields
from typing import Iterable, Optional

# The schema is re-exported: callers import Job, JobStatus, Stage, ... from shared.jobs.
from shared.job_schema import (  # noqa: F401
    Job, JobStatus, Stage, _text, decode_cursor, encode, encode_cursor, iso, new_job_id, statuses,
)


# KEYS[1] the job hash. ARGV: ttl, allowed statuses ("" = any), claimant ("" = none), now, n,
# n field/value pairs, fields to delete. A claimant may not take a running job whose lease another
# worker still holds. Returns -1 when the job does not exist, 0 when not allowed, 1 when written.
_APPLY_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local current = redis.call('HGET', KEYS[1], 'status') or ''
if ARGV[2] ~= '' then
  local allowed = false
  for s in string.gmatch(ARGV[2], '[^,]+') do
    if s == current then allowed = true end
  end
  if not allowed then return 0 end
end
if ARGV[3] ~= '' and current == 'running' then
  local owner = redis.call('HGET', KEYS[1], 'worker')
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
  if owner and owner ~= ARGV[3] and lease > tonumber(ARGV[4]) then return 0 end
end
local n = tonumber(ARGV[5])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + 2 * n)) end
if #ARGV > 5 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 6 + 2 * n, #ARGV)) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

_WRITABLE = {f.name for f in fields(Job)} - {"id", "created_at"}


class JobStore:
    """Job records with an expiry (refreshed on every write), a newest-first index, and the set of
    queued ids (oldest first) from which a worker fills its batch."""

    INDEX = "jobs:index"
    QUEUED = "jobs:queued"

    def __init__(self, redis_client, ttl_seconds: int):
        self.redis = redis_client
        self.ttl = max(1, int(ttl_seconds))
        self._apply_script = redis_client.register_script(_APPLY_LUA)

    @staticmethod
    def key(job_id: str) -> str:
        return f"job:{job_id}"

    def create(self, job: Job) -> Job:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(job.id), mapping=job.to_redis())
        pipe.expire(self.key(job.id), self.ttl)
        pipe.zadd(self.INDEX, {job.id: job.created_at})
        if job.status == JobStatus.QUEUED:
            pipe.zadd(self.QUEUED, {job.id: job.created_at})
        # Bound the indexes: a hash this old has expired even if it was updated late in its life.
        for index in (self.INDEX, self.QUEUED):
            pipe.zremrangebyscore(index, "-inf", f"({time.time() - 2 * self.ttl!r}")
        pipe.execute()
        return job

    def get(self, job_id: str) -> Optional[Job]:
        raw = self.redis.hgetall(self.key(job_id))
        return Job.from_redis(raw) if raw else None

    def delete(self, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key(job_id))
        pipe.zrem(self.INDEX, job_id)
        pipe.zrem(self.QUEUED, job_id)
        pipe.execute()

    def update(self, job_id: str, **changes) -> bool:
        """Set fields (None removes one) whatever the status; False if the job does not exist.

        Status changes belong in `transition`, which checks the current status first.
        """
        return self._apply(job_id, None, changes)

    def transition(self, job_id: str, allowed_from: Iterable, to, claimant: Optional[str] = None, **changes) -> bool:
        """Atomically: if the status is one of `allowed_from`, set it to `to` plus `changes`.

        False when the job is missing or in another status (e.g. canceled meanwhile). Finishing
        statuses get `finished_at` unless given.
        """
        allowed = set(allowed_from)
        if not allowed:
            return False
        to = JobStatus(to)
        if to.finished:
            changes.setdefault("finished_at", time.time())
        return self._apply(job_id, allowed, {**changes, "status": to}, claimant)

    def _apply(self, job_id: str, allowed: Optional[set], changes: dict, claimant: Optional[str] = None) -> bool:
        unknown = set(changes) - _WRITABLE
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        encoded = {name: encode(name, value) for name, value in changes.items()}
        sets = [item for name, value in encoded.items() if value is not None for item in (name, value)]
        dels = [name for name, value in encoded.items() if value is None]
        args = [self.ttl, statuses(allowed) if allowed is not None else "", claimant or "", repr(time.time()),
                len(sets) // 2, *sets, *dels]
        return self._apply_script(keys=[self.key(job_id)], args=args) == 1

    # The worker's vocabulary: each returns False when the job was canceled (or vanished) meanwhile.
    def claim(self, job_id: str, allowed_from: Iterable = (JobStatus.QUEUED,), worker: Optional[str] = None,
              lease_seconds: float = 900) -> bool:
        """Take the job for `worker`; never from another worker whose lease has not expired."""
        now = time.time()
        # batch_size=1 clears a previous run's size; run_job sets the real one once its batch is full.
        claimed = self.transition(job_id, allowed_from, JobStatus.RUNNING, claimant=worker or "", started_at=now,
                                  stage=Stage.CAPTION, error=None, worker=worker, lease_until=now + lease_seconds,
                                  batch_size=1)
        self.redis.zrem(self.QUEUED, job_id)  # claimed, or no longer queued anyway
        return claimed

    def claim_queued(self, limit: int, worker: str, lease_seconds: float = 900) -> list[str]:
        """Claim up to `limit` more queued jobs, oldest first, to share a batch.

        ZPOPMIN hands each candidate to one worker only; a candidate popped by a worker that then
        dies stays queued, and its own queue message still runs it.
        """
        if limit <= 0:
            return []
        popped = [_text(member) for member, _ in self.redis.zpopmin(self.QUEUED, limit)]
        return [job_id for job_id in popped if self.claim(job_id, worker=worker, lease_seconds=lease_seconds)]

    def release(self, job_id: str, claimant: Optional[str] = None) -> bool:
        """Hand a claimed job back to the queue (its batch hit a transient error); never one that
        another worker has taken over meanwhile."""
        released = self.transition(job_id, {JobStatus.RUNNING}, JobStatus.QUEUED, claimant=claimant, stage=None,
                                   started_at=None, worker=None, lease_until=None)
        job = self.get(job_id) if released else None
        if job:
            self.redis.zadd(self.QUEUED, {job_id: job.created_at})
        return released

    def progress(self, job_id: str, stage, claimant: Optional[str] = None, **changes) -> bool:
        return self.transition(job_id, {JobStatus.RUNNING}, JobStatus.RUNNING, claimant=claimant, stage=Stage(stage),
                               **changes)

    def succeed(self, job_id: str, audio_key: str, audio_seconds: float, claimant: Optional[str] = None,
                **changes) -> bool:
        return self.transition(job_id, {JobStatus.RUNNING}, JobStatus.SUCCEEDED, claimant=claimant, stage=None,
                               audio_key=audio_key, audio_seconds=float(audio_seconds), error=None, **changes)

    def fail(self, job_id: str, error: str, claimant: Optional[str] = None, **changes) -> bool:
        """A worker passes itself as claimant, so it cannot fail a job another live worker runs."""
        failed = self.transition(job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.FAILED,
                                 claimant=claimant, error=error, **changes)
        self.redis.zrem(self.QUEUED, job_id)
        return failed

    def cancel(self, job_id: str) -> bool:
        canceled = self.transition(job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.CANCELED)
        self.redis.zrem(self.QUEUED, job_id)
        return canceled

    def list(self, limit: int = 20, cursor: Optional[str] = None) -> tuple[list[Job], Optional[str]]:
        """Newest first. The cursor names the last job returned, so inserts made between pages
        (always newer) neither repeat nor skip entries. Ids whose record expired are pruned."""
        pos = decode_cursor(cursor) if cursor else None
        found: list[tuple[Job, float]] = []
        while len(found) <= limit:
            rows = self._after(pos, limit + 1)
            if not rows:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id, _ in rows:
                pipe.hgetall(self.key(job_id))
            expired = []
            for (job_id, score), raw in zip(rows, pipe.execute()):
                if raw:
                    found.append((Job.from_redis(raw), score))
                else:
                    expired.append(job_id)
            if expired:
                self.redis.zrem(self.INDEX, *expired)
            pos = rows[-1][1], rows[-1][0]
        page = found[:limit]
        next_cursor = encode_cursor(page[-1][1], page[-1][0].id) if len(found) > limit and page else None
        return [job for job, _ in page], next_cursor

    def _after(self, pos: Optional[tuple[float, str]], count: int) -> list[tuple[str, float]]:
        """Index entries strictly after `pos` in newest-first order (equal scores: id descending)."""
        if pos is None:
            rows = self.redis.zrevrangebyscore(self.INDEX, "+inf", "-inf", start=0, num=count, withscores=True)
            return [(_text(m), s) for m, s in rows]
        score, last_id = pos
        ties = self.redis.zcount(self.INDEX, score, score)  # entries sharing the score come first
        rows = self.redis.zrevrangebyscore(self.INDEX, score, "-inf", start=0, num=count + ties, withscores=True)
        rows = [(_text(m), s) for m, s in rows]
        return [(m, s) for m, s in rows if s < score or m < last_id][:count]
