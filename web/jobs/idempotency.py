"""`Idempotency-Key` on POST /api/v1/jobs: a retried submission returns the job the first one made.

The key (1-255 printable ASCII characters, compared as sent) belongs to the caller: two owners (API
keys; ownerless calls share one scope) may use the same key, each for their own job. It is reserved
in Redis before anything is stored, with one atomic SET NX, so of any number of concurrent requests
with one key exactly one creates the job. The reservation, `idempotency:<sha256 of owner and key>`,
holds the request's fingerprint and the id the job will get, and goes through two states:

- pending: the job is being created. The reservation lives PENDING_TTL seconds and the request
  renews it while it works, so one left behind by a process that died mid-request frees the key
  within PENDING_TTL. Requests that find it wait up to WAIT_SECONDS for it to be settled (409
  `idempotency_key_in_use` if it is not).
- done: the job was created and queued; the reservation now lives 24 hours (never longer than
  job records live) and every later request with the key gets that job back.

A request that fails (bad input, storage, Redis or the queue down) deletes its pending reservation,
so the key is not burned: a waiting duplicate or a later retry creates the job instead. Waiters
wait for `done`, not for the job record, because a record can still be removed when enqueueing
fails. The same key with another photo, `words` or `seed` is a 422 `idempotency_key_reused`, whose
message says no more than that (nothing about which request used the key, or how).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time

from flask import current_app
from werkzeug.datastructures import Headers

from shared.jobs import Job
from shared.languages import ENGLISH
from web.middleware.errors import AppError

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, space included
TTL_SECONDS = 24 * 3600  # how long a key names its job
PENDING_TTL = 10  # what a request that died leaves the key reserved for, at most
RENEW_EVERY = PENDING_TTL / 3  # a living request renews its reservation (an S3 upload may retry for longer)
REUSED_MESSAGE = f"This {HEADER} was already used for a different request; choose another key."
WAIT_SECONDS = 5.0  # how long a duplicate waits for the first request to settle
POLL_FIRST, POLL_MAX = 0.02, 0.2

# KEYS[1] the reservation. ARGV[1] the value it must still hold. Deletes it only then, so a
# request never frees a reservation that has passed to another request meanwhile.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] the reservation. ARGV[1] the value it must still hold, ARGV[2] the TTL in ms. 1: renewed.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] the reservation. ARGV: the pending value, the done value, the TTL. Settles our own
# pending reservation; also takes the key back if that expired meanwhile (nobody else holds it).
# Returns 1 when the key now names our job, 0 when another request holds it.
_CONFIRM_LUA = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"""


def redis_key(idempotency_key: str, owner: str | None = None) -> str:
    """Where a key's reservation lives: the one place that decides a key's scope, the owner's."""
    scope = (owner or "") + "\n"  # no owner id holds a newline
    return "idempotency:" + hashlib.sha256((scope + idempotency_key).encode("ascii")).hexdigest()


def fingerprint(
    image: bytes,
    words: int,
    seed: int | None,
    webhook: str | None = None,
    style: str | None = None,
    language: str | None = None,
) -> str:
    """What makes two submissions the same request: the photo's bytes and the parameters as the
    job gets them (`words` after the default is applied, the checked `webhook` URL, the resolved
    style and language). The file name is display only. Without a webhook or style, in English,
    the fingerprint is what it was before those existed."""
    fields = {
        "v": 1,
        "words": words,
        "seed": seed,
        **({"webhook": webhook} if webhook else {}),
        **({"style": style} if style else {}),
        **({"language": language} if language and language != ENGLISH else {}),
    }
    params = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(params + b"\0" + image).hexdigest()


class IdempotentSubmit:
    """One submission's key, from the header to the reservation's end.

    `from_headers` returns None when the header is absent (no idempotency). The job creator calls
    `reserve` once it has a valid request and a job id; None means "create it", a Job means
    "another request with this key made it" (and `replayed` is set). After creating it calls
    `confirm`, or `release` when creating failed.
    """

    def __init__(self, key: str):
        self.key = key
        self.redis_key = redis_key(key)  # until reserve() knows the owner
        self.replayed = False
        self._pending: str | None = None  # our reservation's value while we hold it
        self._done: str | None = None
        self._settled = threading.Event()

    @classmethod
    def from_headers(cls, headers: Headers) -> IdempotentSubmit | None:
        value = headers.get(HEADER)
        if value is None:
            return None
        value = value.strip(" \t")  # not part of a field value (RFC 9110); servers differ in trimming it
        if not KEY_PATTERN.fullmatch(value):
            raise AppError(400, "invalid_idempotency_key", f"'{HEADER}' must be 1 to 255 printable ASCII characters.")
        return cls(value)

    def reserve(
        self,
        redis_client,
        jobs,
        image: bytes,
        words: int,
        seed: int | None,
        job_id: str,
        webhook: str | None = None,
        style: str | None = None,
        owner: str | None = None,
        language: str | None = None,
    ) -> Job | None:
        """Reserve the owner's key for `job_id`, or return the job another request made with it."""
        self.redis_key = redis_key(self.key, owner)
        fp = fingerprint(image, words, seed, webhook, style, language)
        pending = json.dumps({"fingerprint": fp, "job_id": job_id, "state": "pending"})
        deadline = time.monotonic() + WAIT_SECONDS
        pause = POLL_FIRST
        while True:
            if time.monotonic() > deadline:
                raise self._in_use()
            if redis_client.set(self.redis_key, pending, nx=True, ex=PENDING_TTL):
                self._pending = pending
                self._done = json.dumps({"fingerprint": fp, "job_id": job_id, "state": "done"})
                threading.Thread(target=self._renew, args=(redis_client, pending), daemon=True).start()
                return None
            raw = redis_client.get(self.redis_key)
            if raw is None:
                continue  # released or expired between the two calls: try to take it
            try:
                held = json.loads(raw)
                held_fp, held_job, state = held["fingerprint"], held["job_id"], held["state"]
            except (ValueError, KeyError, TypeError):  # not a reservation this module wrote
                self._free(redis_client, raw)
                continue
            if held_fp != fp:
                raise AppError(422, "idempotency_key_reused", REUSED_MESSAGE)
            if state == "done":
                job = jobs.get(held_job)
                if job is not None:
                    self.replayed = True
                    return job
                # The job no longer exists: the key names nothing, so it may make a new one.
                self._free(redis_client, raw)
                continue
            if time.monotonic() + pause > deadline:
                raise self._in_use()
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_MAX)

    def confirm(self, redis_client, ttl_seconds: int) -> None:
        """The job exists and is queued: the key names it from now on. Best effort, since the job
        is made: should Redis fail here, the pending reservation just expires."""
        if self._pending is None:
            return
        try:
            held = redis_client.register_script(_CONFIRM_LUA)(
                keys=[self.redis_key], args=[self._pending, self._done, max(1, min(TTL_SECONDS, ttl_seconds))]
            )
            if held != 1:
                current_app.logger.warning(
                    "idempotency key %s passed to another request while its job was made", self.redis_key
                )
        except Exception as exc:
            current_app.logger.warning("could not settle idempotency key %s: %s", self.redis_key, exc)
        self._pending = None
        self._settled.set()

    def release(self, redis_client) -> None:
        """Creating the job failed: free the key for a retry. Best effort (the original error is the
        one to report); a reservation that cannot be deleted expires after PENDING_TTL."""
        if self._pending is None:
            return
        try:
            self._free(redis_client, self._pending)
        except Exception as exc:
            current_app.logger.warning("could not release idempotency key %s: %s", self.redis_key, exc)
        self._pending = None
        self._settled.set()

    def _renew(self, redis_client, pending: str) -> None:
        """Keep our pending reservation while this request works on it (its own thread, a greenlet
        under gevent): if the process dies, the renewals stop and the key frees within PENDING_TTL."""
        renew = redis_client.register_script(_RENEW_LUA)
        while not self._settled.wait(RENEW_EVERY):
            try:
                if renew(keys=[self.redis_key], args=[pending, int(PENDING_TTL * 1000)]) != 1:
                    return  # no longer ours
            except Exception:  # Redis away: the request meets that itself; keep trying while it runs
                continue

    @staticmethod
    def _in_use() -> AppError:
        return AppError(
            409, "idempotency_key_in_use", f"A request with this {HEADER} is still being processed; retry shortly."
        )

    def _free(self, redis_client, value) -> None:
        redis_client.register_script(_RELEASE_LUA)(keys=[self.redis_key], args=[value])
