"""Job records in Redis: one hash per job (`job:<id>`, expiring) plus sorted-set indexes.

This is the job lifecycle's single source of truth. Status changes go through Lua scripts that check
and write in one step, so a worker finishing a job, a user canceling it and the reaper taking it
back from a dead worker cannot both win. The Job record and its encoding live in job_schema.py.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable
from dataclasses import fields

# The schema is re-exported: callers import Job, JobStatus, Stage, ... from shared.jobs.
from shared.job_schema import (  # noqa: F401
    Job,
    JobStatus,
    Stage,
    _text,
    decode_cursor,
    encode,
    encode_cursor,
    iso,
    new_job_id,
    statuses,
)

# Job hashes are "job:<id>"; the scripts name them from ids, so they assume one Redis (or one
# Sentinel-managed master), not a cluster. Leases use the Redis server's clock (TIME), so workers
# on hosts whose clocks disagree still agree on when a lease has lapsed.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"

# Queued ids live in one index per owner ("-" for ownerless jobs) plus the global one; `jobs:owners`
# holds the owners with queued jobs by turn (the lowest goes next; newcomers get 0, the front).
_QUEUES = """
local function owner_of(key)
  local o = redis.call('HGET', key, 'owner')
  if not o or o == '' then return '-' end
  return o
end
local function enqueue(id, key)
  local o, score = owner_of(key), redis.call('HGET', key, 'created_at')
  redis.call('ZADD', 'jobs:queued', score, id)
  redis.call('ZADD', 'jobs:queued:' .. o, score, id)
  redis.call('ZADD', 'jobs:owners', 'NX', 0, o)
end
local function dequeue(id, o)
  redis.call('ZREM', 'jobs:queued', id)
  redis.call('ZREM', 'jobs:queued:' .. o, id)
  if redis.call('ZCARD', 'jobs:queued:' .. o) == 0 then redis.call('ZREM', 'jobs:owners', o) end
end
"""

# KEYS: the job hash, the queued index, the running index. ARGV: ttl, allowed statuses ("" = any),
# claimant ("" = anyone; else the job's `worker` must be it), job id, n, n field/value pairs, fields
# to delete. The indexes follow the resulting status. -1: no such job, 0: not allowed, 1: written.
_APPLY_LUA = (
    _QUEUES
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local current = redis.call('HGET', KEYS[1], 'status') or ''
if ARGV[2] ~= '' then
  local allowed = false
  for s in string.gmatch(ARGV[2], '[^,]+') do
    if s == current then allowed = true end
  end
  if not allowed then return 0 end
end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3] then return 0 end
local n = tonumber(ARGV[5])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + 2 * n)) end
if #ARGV > 5 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 6 + 2 * n, #ARGV)) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then enqueue(ARGV[4], KEYS[1]) else dequeue(ARGV[4], owner_of(KEYS[1])) end
if status ~= 'running' then redis.call('ZREM', KEYS[3], ARGV[4]) end
redis.call('PUBLISH', 'jobs:changed', ARGV[4])
return 1
"""
)

# KEYS: queued, running. ARGV: claimant, lease seconds, limit, first id ("" = none), ttl, started_at.
# Fair: after `first`, the batch is filled round-robin across owners with queued jobs, each owner's
# oldest first, so one owner's backlog delays another owner's job by about one batch at most. A job
# that ran before (its worker died) runs alone, so a photo that kills workers cannot take its
# batch-mates down with it.
_CLAIM_LUA = (
    _NOW
    + _QUEUES
    + """
local lease, limit = now + tonumber(ARGV[2]), tonumber(ARGV[3])
local claimed, solo = {}, false
local function try(id, o)
  local key = 'job:' .. id
  if redis.call('HGET', key, 'status') ~= 'queued' then  -- gone (expired), or changed meanwhile
    dequeue(id, o or owner_of(key))
    return 'gone'
  end
  o = owner_of(key)
  local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0') or 0
  if attempts > 0 then
    if #claimed > 0 then return 'later' end
    solo = true
  end
  redis.call('HSET', key, 'status', 'running', 'stage', 'caption', 'worker', ARGV[1],
             'lease_until', tostring(lease), 'started_at', ARGV[6], 'attempts', tostring(attempts + 1))
  redis.call('HDEL', key, 'error')
  redis.call('EXPIRE', key, tonumber(ARGV[5]))
  dequeue(id, o)
  redis.call('ZADD', 'jobs:owners', 'XX', redis.call('INCR', 'jobs:turn'), o)  -- to the back of the line
  redis.call('ZADD', KEYS[2], lease, id)
  table.insert(claimed, id)
  return 'claimed'
end
if ARGV[4] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[4]) then try(ARGV[4], nil) end
local progress = true
while progress and not solo and #claimed < limit do
  progress = false
  for _, o in ipairs(redis.call('ZRANGE', 'jobs:owners', 0, limit - 1)) do
    if solo or #claimed >= limit then break end
    -- this owner's oldest job that may join the batch (a rerun waits for a batch of its own)
    local queued = redis.call('ZRANGE', 'jobs:queued:' .. o, 0, limit)
    if #queued == 0 then redis.call('ZREM', 'jobs:owners', o) end
    for _, id in ipairs(queued) do
      local result = try(id, o)
      if result ~= 'later' then progress = true end
      if result == 'claimed' then break end
    end
  end
end
for _, id in ipairs(claimed) do redis.call('HSET', 'job:' .. id, 'batch_size', tostring(#claimed)) end
if #claimed > 0 then redis.call('PUBLISH', 'jobs:changed', table.concat(claimed, ' ')) end
return claimed
"""
)

# KEYS: running. ARGV: claimant, lease seconds, ids. Extends the leases the claimant still holds;
# returns the ids it no longer holds (canceled, finished, or taken back after its lease lapsed).
_RENEW_LUA = (
    _NOW
    + """
local lease = now + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV do
  local key = 'job:' .. ARGV[i]
  if redis.call('HGET', key, 'status') == 'running' and redis.call('HGET', key, 'worker') == ARGV[1] then
    redis.call('HSET', key, 'lease_until', tostring(lease))
    redis.call('ZADD', KEYS[1], lease, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# KEYS: running, queued. ARGV: max attempts, error for a job out of attempts, ttl, finished_at, cap.
# Every running job whose lease lapsed goes back to the queue at its old place (or fails once it
# has used its attempts). Returns {requeued ids, failed ids}.
_REAP_LUA = (
    _NOW
    + _QUEUES
    + """
local requeued, failed = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))) do
  local key = 'job:' .. id
  local lease = tonumber(redis.call('HGET', key, 'lease_until') or '0') or 0
  if redis.call('HGET', key, 'status') ~= 'running' then
    redis.call('ZREM', KEYS[1], id)
  elseif lease > now then
    redis.call('ZADD', KEYS[1], lease, id)
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', key, 'worker', 'lease_until', 'stage')
    if (tonumber(redis.call('HGET', key, 'attempts') or '0') or 0) >= tonumber(ARGV[1]) then
      redis.call('HSET', key, 'status', 'failed', 'error', ARGV[2], 'finished_at', ARGV[4])
      table.insert(failed, id)
    else
      -- what the lost run published is gone with it
      redis.call('HDEL', key, 'started_at', 'caption', 'story', 'timings')
      redis.call('HSET', key, 'status', 'queued')
      enqueue(id, key)
      table.insert(requeued, id)
    end
    redis.call('EXPIRE', key, tonumber(ARGV[3]))
  end
end
if #requeued + #failed > 0 then
  redis.call('PUBLISH', 'jobs:changed', table.concat(requeued, ' ') .. ' ' .. table.concat(failed, ' '))
end
return {requeued, failed}
"""
)

_WRITABLE = {f.name for f in fields(Job)} - {"id", "created_at"}


def died_message(attempts: int) -> str:
    return (
        f"the worker stopped while running this job, {attempts} times (MAX_ATTEMPTS); "
        "the photo may be one the models cannot handle"
    )


class JobStore:
    """Job records with an expiry (refreshed on every write), a newest-first index, the queued ids
    (oldest first) from which workers fill their batches, and the running ids by lease expiry.

    The record is the truth: a worker claims jobs with a short lease that its heartbeat renews, and
    `reap` puts back every job whose lease lapsed. Every write of a run names its claimant, so a
    run that lost its job (reaped, canceled) can no longer change it.
    """

    INDEX = "jobs:index"
    QUEUED = "jobs:queued"
    RUNNING = "jobs:running"
    OWNERS = "jobs:owners"
    # Every script that changes jobs' status or stage publishes their ids here (space-separated),
    # so web processes can answer long polls (`?wait=`) the moment a job changes.
    CHANGES = "jobs:changed"

    @staticmethod
    def owner_index(owner: str) -> str:
        return f"jobs:index:{owner}"

    @staticmethod
    def owner_queue(owner: str | None) -> str:
        return f"jobs:queued:{owner or '-'}"

    def __init__(self, redis_client, ttl_seconds: int):
        self.redis = redis_client
        self.ttl = max(1, int(ttl_seconds))
        self._apply_script = redis_client.register_script(_APPLY_LUA)
        self._claim_script = redis_client.register_script(_CLAIM_LUA)
        self._renew_script = redis_client.register_script(_RENEW_LUA)
        self._reap_script = redis_client.register_script(_REAP_LUA)

    @staticmethod
    def key(job_id: str) -> str:
        return f"job:{job_id}"

    def create(self, job: Job) -> Job:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(job.id), mapping=job.to_redis())
        pipe.expire(self.key(job.id), self.ttl)
        indexes = [self.INDEX]
        if job.owner:
            indexes.append(self.owner_index(job.owner))
        if job.status == JobStatus.QUEUED:
            indexes += [self.QUEUED, self.owner_queue(job.owner)]
            pipe.zadd(self.OWNERS, {job.owner or "-": 0}, nx=True)
        for index in indexes:
            pipe.zadd(index, {job.id: job.created_at})
            # Bound the indexes: a hash this old has expired even if it was updated late in its life.
            pipe.zremrangebyscore(index, "-inf", f"({time.time() - 2 * self.ttl!r}")
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.hgetall(self.key(job_id))
        return Job.from_redis(raw) if raw else None

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key(job_id))
        indexes = [self.INDEX, self.QUEUED, self.RUNNING]
        if job is not None:
            indexes.append(self.owner_queue(job.owner))
            if job.owner:
                indexes.append(self.owner_index(job.owner))
        for index in indexes:
            pipe.zrem(index, job_id)
        pipe.execute()

    def queued_count(self, owner: str | None = None) -> int:
        """All queued jobs, or one owner's."""
        return int(self.redis.zcard(self.owner_queue(owner) if owner else self.QUEUED))

    def queued_ids(self, limit: int) -> list[str]:
        return [_text(m) for m in self.redis.zrange(self.QUEUED, 0, limit - 1)]

    def update(self, job_id: str, **changes) -> bool:
        """Set fields (None removes one) whatever the status; False if the job does not exist.

        Status changes belong in `transition`, which checks the current status first.
        """
        return self._apply(job_id, None, changes)

    def transition(self, job_id: str, allowed_from: Iterable, to, claimant: str | None = None, **changes) -> bool:
        """Atomically: if the status is one of `allowed_from` (and the job is held by `claimant`,
        when given), set it to `to` plus `changes`. False when the job is missing, in another status
        (e.g. canceled meanwhile) or held by another run. Finishing statuses get `finished_at`."""
        allowed = set(allowed_from)
        if not allowed:
            return False
        to = JobStatus(to)
        if to.finished:
            changes.setdefault("finished_at", time.time())
        return self._apply(job_id, allowed, {**changes, "status": to}, claimant)

    def _apply(self, job_id: str, allowed: set | None, changes: dict, claimant: str | None = None) -> bool:
        unknown = set(changes) - _WRITABLE
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        encoded = {name: encode(name, value) for name, value in changes.items()}
        sets = [item for name, value in encoded.items() if value is not None for item in (name, value)]
        dels = [name for name, value in encoded.items() if value is None]
        args = [
            self.ttl,
            statuses(allowed) if allowed is not None else "",
            claimant or "",
            job_id,
            len(sets) // 2,
            *sets,
            *dels,
        ]
        return self._apply_script(keys=[self.key(job_id), self.QUEUED, self.RUNNING], args=args) == 1

    # The worker's vocabulary. A claimant names one run of one worker (see worker.runner).
    def claim(self, claimant: str, limit: int = 1, lease_seconds: float = 20, first: str | None = None) -> list[str]:
        """Take up to `limit` queued jobs for `claimant` (`first`, then round-robin across owners), each
        leased for `lease_seconds`. A job that already ran once is only ever taken alone."""
        if limit <= 0:
            return []
        args = [claimant, lease_seconds, limit, first or "", self.ttl, repr(time.time())]
        return [_text(i) for i in self._claim_script(keys=[self.QUEUED, self.RUNNING], args=args)]

    def renew(self, claimant: str, job_ids: Iterable[str], lease_seconds: float) -> set[str]:
        """Extend the claimant's leases; returns the ids it no longer holds."""
        ids = list(job_ids)
        if not ids:
            return set()
        return {_text(i) for i in self._renew_script(keys=[self.RUNNING], args=[claimant, lease_seconds, *ids])}

    def reap(self, max_attempts: int, cap: int = 500) -> tuple[list[str], list[str]]:
        """Jobs whose lease lapsed: back to the queue, or failed once out of attempts.
        Returns (requeued, failed); the caller wakes a worker for each requeued job."""
        requeued, failed = self._reap_script(
            keys=[self.RUNNING, self.QUEUED],
            args=[max_attempts, died_message(max_attempts), self.ttl, repr(time.time()), cap],
        )
        return [_text(i) for i in requeued], [_text(i) for i in failed]

    def release(self, job_id: str, claimant: str) -> bool:
        """Hand a held job back to the queue (its worker is stopping); this run does not count
        against the job's attempts."""
        job = self.get(job_id)
        if job is None:
            return False
        return self.transition(
            job_id,
            {JobStatus.RUNNING},
            JobStatus.QUEUED,
            claimant=claimant,
            stage=None,
            started_at=None,
            worker=None,
            lease_until=None,
            caption=None,
            story=None,
            timings={},
            attempts=max(0, job.attempts - 1),
        )

    def progress(self, job_id: str, stage, claimant: str | None = None, **changes) -> bool:
        return self.transition(
            job_id, {JobStatus.RUNNING}, JobStatus.RUNNING, claimant=claimant, stage=Stage(stage), **changes
        )

    def succeed(
        self, job_id: str, audio_key: str, audio_seconds: float, claimant: str | None = None, **changes
    ) -> bool:
        return self.transition(
            job_id,
            {JobStatus.RUNNING},
            JobStatus.SUCCEEDED,
            claimant=claimant,
            stage=None,
            audio_key=audio_key,
            audio_seconds=float(audio_seconds),
            error=None,
            worker=None,
            lease_until=None,
            **changes,
        )

    def fail(self, job_id: str, error: str, claimant: str | None = None, **changes) -> bool:
        """A run passes itself as claimant, so it can only fail a job it still holds."""
        allowed = {JobStatus.RUNNING} if claimant else {JobStatus.QUEUED, JobStatus.RUNNING}
        return self.transition(
            job_id, allowed, JobStatus.FAILED, claimant=claimant, error=error, worker=None, lease_until=None, **changes
        )

    def cancel(self, job_id: str) -> bool:
        return self.transition(
            job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.CANCELED, worker=None, lease_until=None
        )

    def list(
        self, limit: int = 20, cursor: str | None = None, owner: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Newest first: one owner's jobs, or (owner None) everyone's. The cursor names the last job
        returned, so inserts made between pages (always newer) neither repeat nor skip entries. Ids
        whose record expired are pruned."""
        index = self.owner_index(owner) if owner else self.INDEX
        pos = decode_cursor(cursor) if cursor else None
        found: list[tuple[Job, float]] = []
        while len(found) <= limit:
            rows = self._after(index, pos, limit + 1)
            if not rows:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id, _ in rows:
                pipe.hgetall(self.key(job_id))
            expired: list[str] = []
            for (job_id, score), raw in zip(rows, pipe.execute(), strict=True):
                if raw:
                    found.append((Job.from_redis(raw), score))
                else:
                    expired.append(job_id)
            if expired:
                self.redis.zrem(index, *expired)
            pos = rows[-1][1], rows[-1][0]
        page = found[:limit]
        next_cursor = encode_cursor(page[-1][1], page[-1][0].id) if len(found) > limit and page else None
        return [job for job, _ in page], next_cursor

    # builtins.list: inside the class, `list` is the method above.
    def _after(self, index: str, pos: tuple[float, str] | None, count: int) -> builtins.list[tuple[str, float]]:
        """Index entries strictly after `pos` in newest-first order (equal scores: id descending)."""
        if pos is None:
            rows = self.redis.zrevrangebyscore(index, "+inf", "-inf", start=0, num=count, withscores=True)
            return [(_text(m), s) for m, s in rows]
        score, last_id = pos
        ties = self.redis.zcount(index, score, score)  # entries sharing the score come first
        rows = self.redis.zrevrangebyscore(index, score, "-inf", start=0, num=count + ties, withscores=True)
        rows = [(_text(m), s) for m, s in rows]
        return [(m, s) for m, s in rows if s < score or m < last_id][:count]
