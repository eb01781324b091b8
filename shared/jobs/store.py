"""Job records in Redis: one hash per job (`job:<id>`, expiring) plus sorted-set indexes.

This is the job lifecycle's single source of truth. Every status change is one Lua script in
lua/ (the state machine, one file per transition; lua/README.md draws it), which checks and writes
in one step, so a worker finishing a job, a user canceling it and the reaper taking it back from a
dead worker cannot both win. A run's writes are per batch: one script call claims a batch, one
writes a stage's results for all of it, one finishes it; each checks, job by job, that the run
(its claimant) still holds the job. The Job record and its encoding live in schema.py.

Every transition that ends a job (finish, cancel, reap, a job created already finished) hands the
records it wrote to the store's `notify` (the webhooks' outbox, shared/webhooks/outbox.py, injected
by whoever builds the store), so no caller has to remember a job's webhook.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from shared.jobs.queue import QUEUE
from shared.jobs.schema import Job, JobStatus, Stage, _text, decode_cursor, encode, encode_cursor

LUA = Path(__file__).with_name("lua")
_WRITABLE = {f.name for f in fields(Job)} - {"id", "created_at", "status", "finished_at", "worker"}


def _script(redis_client, name: str):
    # Job hashes are "job:<id>"; the scripts name them from ids, so they assume one Redis (or one
    # Sentinel-managed master), not a cluster.
    return redis_client.register_script((LUA / "queues.lua").read_text() + (LUA / f"{name}.lua").read_text())


# The `error` of a job whose deadline passed before any run took it (it never ran).
EXPIRED_MESSAGE = "expired: no worker started this job before its deadline, so it never ran"


def died_message(attempts: int) -> str:
    return (
        f"the worker stopped while running this job alone, {attempts} time(s) (MAX_ATTEMPTS); "
        "the photo may be one the models cannot handle"
    )


def created_score(created_at: float) -> int:
    """A job's place in its owner's queue and index: its creation time in whole microseconds.
    Whole numbers, because a small sorted set (a listpack, up to 128 entries) keeps an integer score
    as an integer but a fractional one as text, which Redis parses again at every entry an insert
    passes: a ZADD into an owner's queue of 200 cost 11-14 us with seconds, 4 us with microseconds.
    Halves round up, as queues.lua's enqueue rounds them (Python's round() would take the even one)."""
    return math.floor(created_at * 1_000_000 + 0.5)


# Index entries written before scores were microseconds hold seconds: any score below this.
_SECONDS_SCORES = 1e12


def _pairs(changes: dict) -> list[str]:
    """Field/value pairs to write; a change to None is not a write (the scripts clear what a
    transition leaves behind themselves)."""
    unknown = set(changes) - _WRITABLE
    if unknown:
        raise ValueError(f"not job fields a run writes: {sorted(unknown)}")
    return [item for name, value in changes.items() if (v := encode(name, value)) is not None for item in (name, v)]


def _per_job(rows: Iterable[tuple], width: int) -> list:
    """ARGV for the batch scripts: per job its `width` leading values, then n, then n pairs."""
    args: list = []
    for row in rows:
        pairs = _pairs(row[width])
        args += [*row[:width], len(pairs) // 2, *pairs]
    return args


class JobStore:
    """Job records with an expiry (refreshed when a job ends), a newest-first index per owner, the
    queued ids (oldest first, per owner) from which workers fill their batches, and the running ids
    by lease expiry.

    The record is the truth: a worker claims jobs with a short lease that its heartbeat renews, and
    `reap` puts back every job whose lease lapsed. Every write of a run names its claimant, so a
    run that lost its job (reaped, canceled) can no longer change it.

    `notify`, when given, is called with the records of the jobs each ending transition ended, as
    written (never read again), once per job: the webhooks' outbox, which never raises.
    """

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
        """A queue of the round-robin: an owner's, or a lane's (Job.queue_owner)."""
        return f"jobs:queued:{owner or '-'}"

    def __init__(self, redis_client, ttl_seconds: int, notify: Callable[[list[Job]], object] | None = None):
        self.redis = redis_client
        self.ttl = max(1, int(ttl_seconds))
        self.notify = notify
        self._scripts = {
            name: _script(redis_client, name)
            for name in ("claim", "progress", "finish", "cancel", "release", "renew", "reap")
        }

    @staticmethod
    def key(job_id: str) -> str:
        return f"job:{job_id}"

    def _ended(self, jobs: builtins.list[Job]) -> None:
        if jobs and self.notify is not None:
            self.notify(jobs)

    def create(self, job: Job) -> Job:
        """Record a new job (queued: at the back of its owner's queue), in one round trip.

        No transaction is needed: the record comes first, so a claim that runs between these
        commands cannot find the id in a queue before its record exists (it would drop it as gone),
        and only a Redis crash between them (whose last second AOF everysec may lose anyway) could
        leave a record without its queue entries. A job created already finished (a result-cache
        hit) ends here: it goes to `notify`."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(job.id), mapping=job.to_redis())
        pipe.expire(self.key(job.id), self.ttl)
        if job.owner:
            pipe.zadd(self.owner_index(job.owner), {job.id: created_score(job.created_at)})
            pipe.expire(self.owner_index(job.owner), 2 * self.ttl)  # an owner gone quiet leaves no index
        if job.status == JobStatus.QUEUED:
            pipe.zadd(self.owner_queue(job.queue_owner), {job.id: created_score(job.created_at)})
            pipe.zadd(self.OWNERS, {job.queue_owner: 0}, nx=True)
        pipe.execute()
        if JobStatus(job.status).finished:
            self._ended([job])
        return job

    def trim_index(self, owner: str) -> None:
        """Drop an owner's index entries older than any record can be (a hash this old has expired
        even if it was updated late in its life); done as the index is listed. Entries from before
        microsecond scores (seconds: below every microsecond score, and older) go by their own clock."""
        oldest = time.time() - 2 * self.ttl
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.owner_index(owner), "-inf", f"({oldest!r}")
        pipe.zremrangebyscore(self.owner_index(owner), _SECONDS_SCORES, f"({created_score(oldest)}")
        pipe.execute()

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.hgetall(self.key(job_id))
        return Job.from_redis(raw) if raw else None

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key(job_id))
        indexes = [self.RUNNING]
        if job is not None:
            indexes.append(self.owner_queue(job.queue_owner))
            if job.owner:
                indexes.append(self.owner_index(job.owner))
        for index in indexes:
            pipe.zrem(index, job_id)
        pipe.execute()

    # No index holds every queued job (it would cost each submit and each claim a write): the
    # whole queue is its owners' queues, counted here for /readyz and metrics, not per job.
    def queued_count(self, owner: str | None = None) -> int:
        """All queued jobs, or one owner's (or lane's)."""
        if owner:
            return int(self.redis.zcard(self.owner_queue(owner)))
        pipe = self.redis.pipeline(transaction=False)
        for name in self.redis.zrange(self.OWNERS, 0, -1):
            pipe.zcard(self.owner_queue(_text(name)))
        return sum(pipe.execute())

    def queued_ids(self, limit: int) -> list[str]:
        """Up to `limit` queued ids, the next owners' (in round-robin order) first."""
        pipe = self.redis.pipeline(transaction=False)
        for name in self.redis.zrange(self.OWNERS, 0, limit - 1):
            pipe.zrange(self.owner_queue(_text(name)), 0, limit - 1)
        return [_text(m) for ids in pipe.execute() for m in ids][:limit]

    def update(self, job_id: str, **changes) -> bool:
        """Set fields (None removes one) of an existing job whatever its status, which this never
        changes (status changes are the scripts'), and refresh its expiry. False if the job does not exist."""
        unknown = set(changes) - _WRITABLE
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        encoded = {name: encode(name, value) for name, value in changes.items()}
        sets = {name: value for name, value in encoded.items() if value is not None}
        dels = [name for name, value in encoded.items() if value is None]
        key = self.key(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.exists(key)
        if sets:
            pipe.hset(key, mapping=sets)
        if dels:
            pipe.hdel(key, *dels)
        pipe.expire(key, self.ttl)
        exists = pipe.execute()[0]
        if not exists:
            self.redis.delete(key)  # the fields written to a missing hash made a stray one
        return bool(exists)

    # The worker's vocabulary. A claimant names one run of one worker (see worker.runner).
    def claim_jobs(
        self, claimant: str, limit: int = 1, lease_seconds: float = 20, first: str | None = None
    ) -> builtins.list[Job]:
        """Take up to `limit` queued jobs for `claimant` (`first`, then round-robin across owners),
        each leased for `lease_seconds`; their records as claimed. A job that already ran once is
        only ever taken alone; a wake-up whose job is no longer queued claims nothing."""
        if limit <= 0 or (first and _text(self.redis.hget(self.key(first), "status")) != JobStatus.QUEUED.value):
            return []  # its job went with an earlier batch (whose claim found this wake-up delivered already)
        result = self._scripts["claim"](args=[claimant, lease_seconds, limit, first or "", EXPIRED_MESSAGE, QUEUE])
        ids, expired = result if result else ([], [])
        if not ids and not expired:
            return []
        # Read apart from the script: a record handed out of Lua costs Redis more than an HGETALL.
        pipe = self.redis.pipeline(transaction=False)
        for job_id in [*ids, *expired]:
            pipe.hgetall(self.key(_text(job_id)))
        records = [Job.from_redis(raw) if raw else None for raw in pipe.execute()]
        self._ended([job for job in records[len(ids) :] if job is not None])  # their webhooks
        return [job for job in records[: len(ids)] if job is not None]

    def claim(self, claimant: str, limit: int = 1, lease_seconds: float = 20, first: str | None = None) -> list[str]:
        """claim_jobs, for callers that need only the ids."""
        return [job.id for job in self.claim_jobs(claimant, limit, lease_seconds, first)]

    def progress_batch(self, claimant: str | None, stage, changes: Sequence[tuple[str, dict]]) -> set[str]:
        """Move each job (id, its fields) to `stage` with its fields, in one call, if `claimant` still
        holds it (None: any run); returns the ids it no longer holds."""
        if not changes:
            return set()
        args = [claimant or "", Stage(stage).value, *_per_job(changes, 1)]
        return {_text(i) for i in self._scripts["progress"](args=args)}

    def progress(self, job_id: str, stage, claimant: str | None = None, **changes) -> bool:
        return not self.progress_batch(claimant, stage, [(job_id, changes)])

    def finish_batch(self, claimant: str | None, results: Sequence[tuple[Job, JobStatus, dict]]) -> builtins.list[Job]:
        """End each (job, succeeded or failed, its fields) that `claimant` still holds (None: any
        run; then a queued job may fail too), in one call. Returns the jobs it ended, their records
        updated in place as written (and handed to `notify`): callers hand them on (metrics, the
        result cache) without reading them again."""
        if not results:
            return []
        rows = [(job.id, JobStatus(status).value, changes) for job, status, changes in results]
        done, finished_at = self._scripts["finish"](args=[claimant or "", self.ttl, *_per_job(rows, 2)])
        done = {_text(i) for i in done}
        ended = []
        for job, status, changes in results:
            if job.id in done:
                for name, value in changes.items():
                    setattr(job, name, value)
                job.status, job.finished_at, job.worker, job.stage = JobStatus(status), float(finished_at), None, None
                if job.status == JobStatus.SUCCEEDED:
                    job.error = None
                ended.append(job)
        self._ended(ended)
        return ended

    # succeed and fail are finish_batch for one job by id, for callers that hold no record (tools,
    # tests): they read it first, so that `notify` gets the whole record (its webhook included).
    def succeed(
        self, job_id: str, audio_key: str, audio_seconds: float, claimant: str | None = None, **changes
    ) -> bool:
        job = self.get(job_id) or Job(id=job_id)
        changes.update(audio_key=audio_key, audio_seconds=float(audio_seconds))
        return bool(self.finish_batch(claimant, [(job, JobStatus.SUCCEEDED, changes)]))

    def fail(self, job_id: str, error: str, claimant: str | None = None, **changes) -> bool:
        """A run passes itself as claimant, so it can only fail a job it still holds."""
        job = self.get(job_id) or Job(id=job_id)
        return bool(self.finish_batch(claimant, [(job, JobStatus.FAILED, {**changes, "error": error})]))

    def cancel(self, job_id: str) -> Job | None:
        """queued | running -> canceled: the canceled record (handed to `notify`), or None when
        there is no such job or it had already ended."""
        raw = self._scripts["cancel"](args=[job_id, self.ttl])
        if not isinstance(raw, builtins.list):
            return None
        job = Job.from_redis(dict(zip(raw[::2], raw[1::2], strict=True)))
        self._ended([job])
        return job

    def release(self, job_id: str, claimant: str) -> bool:
        """Hand a held job back to the queue (its worker is stopping, or storage could not serve its
        photo); this run does not count against the job's attempts."""
        return self._scripts["release"](args=[job_id, claimant]) == 1

    def renew(self, claimant: str, job_ids: Iterable[str], lease_seconds: float) -> set[str]:
        """Extend the claimant's leases; returns the ids it no longer holds."""
        ids = builtins.list(job_ids)
        if not ids:
            return set()
        return {_text(i) for i in self._scripts["renew"](args=[claimant, lease_seconds, *ids])}

    def reap(self, max_attempts: int, cap: int = 500) -> tuple[builtins.list[str], builtins.list[str]]:
        """Jobs whose lease lapsed: back to the queue, or failed once out of attempts.
        Returns (requeued ids, failed ids); the caller wakes a worker for each requeued job. The
        failed records go to `notify`."""
        requeued, failed = self._scripts["reap"](args=[max_attempts, died_message(max_attempts), self.ttl, cap])
        records = [Job.from_redis(dict(zip(raw[::2], raw[1::2], strict=True))) for raw in failed]
        self._ended(records)
        return [_text(i) for i in requeued], [job.id for job in records]

    def list(
        self, limit: int = 20, cursor: str | None = None, owner: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Newest first: one owner's jobs, or (owner None) every job in Redis. The cursor names the
        last job returned, so inserts made between pages (always newer) neither repeat nor skip
        entries. Ids whose record expired are pruned from the owner's index.

        Only owners have an index (every request lists its owner's): everyone's jobs are a scan of
        the job records, for operators' tools, never a request's path."""
        if owner is None:
            return self._list_all(limit, cursor)
        index = self.owner_index(owner)
        self.trim_index(owner)
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
        return self._page(found, limit)

    @staticmethod
    def _page(found: builtins.list[tuple[Job, float]], limit: int) -> tuple[builtins.list[Job], str | None]:
        page = found[:limit]
        next_cursor = encode_cursor(page[-1][1], page[-1][0].id) if len(found) > limit and page else None
        return [job for job, _ in page], next_cursor

    def _list_all(self, limit: int, cursor: str | None) -> tuple[builtins.list[Job], str | None]:
        pos = decode_cursor(cursor) if cursor else None
        keys = builtins.list(self.redis.scan_iter(match=self.key("*"), count=1000, _type="hash"))
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "created_at")
        prefix = len(self.key(""))
        created = zip(keys, pipe.execute(), strict=True)
        rows = sorted(((float(at), _text(key)[prefix:]) for key, at in created if at), reverse=True)
        if pos is not None:
            rows = [(score, job_id) for score, job_id in rows if (score, job_id) < pos]
        rows = rows[: limit + 1]
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id in rows:
            pipe.hgetall(self.key(job_id))
        found = [(Job.from_redis(raw), score) for (score, _), raw in zip(rows, pipe.execute(), strict=True) if raw]
        return self._page(found, limit)

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
