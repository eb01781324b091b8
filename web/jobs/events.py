"""Long polls: wake the requests waiting on a job when the job store says the job changed.

The job store's Lua scripts PUBLISH the ids of changed jobs on `jobs:changed` (JobStore.CHANGES).
Each web process holds ONE subscription to it, read by one background thread (a greenlet under
gunicorn's gevent worker, which patches `threading`), and fans each message out to the requests
waiting on those ids. A waiting request holds an Event, nothing else: no thread of its own under
gevent, no Redis connection, and it sends Redis nothing while it waits, so a thousand waiting
clients cost Redis one subscription per process.

A waiter is only ever *woken*; it then re-reads its job and decides for itself whether what it
waits for happened. That keeps every wake-up safe to send too often, which is how the gaps are
covered: after each (re)subscription every waiter is woken, since changes published while there
was no subscription were lost.

The subscription is made by the first wait and ends after IDLE_SECONDS without one (an idle process
then receives none of the cluster's change messages); a process forked from one that had it makes
its own.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import redis

from shared.jobs import JobStore

log = logging.getLogger(__name__)

# Between attempts to subscribe again while Redis is away: start quick (a restart), then ease off.
RETRY_FIRST, RETRY_MAX = 0.2, 5.0
# How long one read of the subscription blocks; between reads the loop notices close() and lets
# redis-py send its health-check PING (the client's health_check_interval), a few per minute at most.
READ_SECONDS = 5.0
# With no request waiting for this long, the subscription ends (the next wait makes it again).
IDLE_SECONDS = 60.0
# Waiters reading their job at once, at most: one wake-up can start many reads (every waiter, after
# subscribing again), and each holds a connection of the app's pool (redis-py's default: 100, then
# "Too many connections"), which the process's other requests need too.
CONCURRENT_READS = 32
# A health-check PING unanswered this long means the connection is dead though not closed (a host
# that vanished, a Sentinel failover away from it): subscribe again.
UNANSWERED_PING_SECONDS = 15.0


class Waiter:
    """One waiting request. `wait` returns True when woken (the job may have changed), False when
    `timeout` passed first."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.blocked = False  # in wait() now (it has read its job): what JobEvents.waiting() counts
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        self.blocked = True
        try:
            if timeout <= 0 or not self._event.wait(timeout):
                return False
        finally:
            self.blocked = False
        self._event.clear()  # before the caller re-reads the job, so a later change wakes it again
        return True


class JobEvents:
    """The per-process subscription to job changes and the waiters it wakes."""

    def __init__(self, client: redis.Redis, channel: str = JobStore.CHANGES):
        self._client = client
        self._channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._reader_pid: int | None = None  # the process whose reader runs; None: none runs
        self._idle_since = time.monotonic()
        self._pubsubs: set[redis.client.PubSub] = set()  # the readers' (one, but for a fork in a test)
        self._closed = False
        # Hold it around each read a waiter makes (see CONCURRENT_READS).
        self.reading = threading.BoundedSemaphore(CONCURRENT_READS)
        self.subscriptions = 0  # how many times the subscription was made (tests, logs)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[Waiter]:
        """A waiter for `job_id`, registered for the block. Read the job *inside* the block: a
        change after registering wakes the waiter, so none slips between the read and the wait."""
        waiter = Waiter(job_id)
        with self._lock:
            self._ensure_reader()
            self._waiters.setdefault(job_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiting = self._waiters.get(job_id)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[job_id]
                self._idle_since = time.monotonic()

    def waiting(self) -> int:
        """Requests waiting now (not those reading their job before or between waits)."""
        with self._lock:
            return sum(w.blocked for waiters in self._waiters.values() for w in waiters)

    def listening(self) -> bool:
        """Whether this process's reader runs (it may be between two subscriptions)."""
        with self._lock:
            return self._reader_pid == os.getpid()

    def close(self) -> None:
        """Stop the readers (tests; a web process simply exits)."""
        with self._lock:
            self._closed = True
            pubsubs = list(self._pubsubs)
        for pubsub in pubsubs:
            try:
                pubsub.close()
            except Exception:  # the reader is stopping anyway
                pass

    # --- the reader ----------------------------------------------------------------------------
    def _ensure_reader(self) -> None:
        """Start the reader on a wait when none runs in this process: the first wait, the first
        after the reader stopped for want of waiters, the first in a child forked after a reader
        started (the parent's thread and subscription do not exist there). Called with the lock held."""
        if self._reader_pid == os.getpid() or self._closed:
            return
        if self._reader_pid is not None:  # forked: the parent's waiters are not this process's requests
            self._waiters = {}
        self._reader_pid = os.getpid()
        threading.Thread(target=self._run, name="job-events", daemon=True).start()

    def _stop_if_idle(self) -> bool:
        """Unsubscribe once no request has waited for IDLE_SECONDS (the next wait subscribes again):
        an idle process then receives none of the cluster's change messages."""
        with self._lock:
            if self._closed or (not self._waiters and time.monotonic() - self._idle_since > IDLE_SECONDS):
                if self._reader_pid == os.getpid():
                    self._reader_pid = None
                return True
            return False

    def _run(self) -> None:
        pause, failing = RETRY_FIRST, False
        while not self._stop_if_idle():  # once it says stop, stop: a new reader may start at once
            pubsub = self._client.pubsub()
            with self._lock:
                self._pubsubs.add(pubsub)
            made = self.subscriptions
            try:
                pubsub.subscribe(self._channel)
                self._read(pubsub)
                return
            except Exception as exc:  # the reader must outlive any failure, or every wait runs to its end
                if self._closed:
                    break
                if self.subscriptions > made:
                    pause, failing = RETRY_FIRST, False  # it was up: a new outage
                # One warning an outage (then debug), or every process would log each retry.
                level = logging.DEBUG if failing else logging.WARNING
                if not isinstance(exc, (redis.RedisError, OSError)):
                    level = logging.ERROR
                log.log(level, "job change subscription lost (%s: %s); again in %.1f s", type(exc).__name__, exc, pause)
                failing = True
            finally:
                with self._lock:
                    self._pubsubs.discard(pubsub)
                try:
                    pubsub.close()
                except Exception:  # already broken: nothing more to release
                    pass
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def _read(self, pubsub: redis.client.PubSub) -> None:
        """Wake the waiters of each message until _stop_if_idle says stop; raises when the
        connection fails."""
        unanswered_since: float | None = None
        while not self._stop_if_idle():
            message = pubsub.get_message(timeout=READ_SECONDS)
            if message is not None:
                self._dispatch(message)
            if pubsub.health_check_response_counter > 0:  # a PING is out: is anyone there?
                unanswered_since = unanswered_since or time.monotonic()
                if time.monotonic() - unanswered_since > UNANSWERED_PING_SECONDS:
                    raise redis.ConnectionError("no answer to the health check")
            else:
                unanswered_since = None

    def _dispatch(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # (Re)subscribed: whatever was published while there was no subscription is lost,
            # so every waiter looks at its job again.
            self.subscriptions += 1
            self._wake_all()
        elif kind == "message":
            data = message.get("data") or b""
            ids = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
            self._wake(ids.split())

    def _wake(self, job_ids: list[str]) -> None:
        with self._lock:
            waiters = [w for job_id in job_ids for w in self._waiters.get(job_id, ())]
        for waiter in waiters:
            waiter.wake()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for waiting in self._waiters.values() for w in waiting]
        for waiter in waiters:
            waiter.wake()


# --- what a request asks for --------------------------------------------------------------------
MAX_WAIT = 60.0  # seconds; below the proxy's and the clients' read timeouts
_SECONDS = re.compile(r"\d{1,9}(?:\.\d{0,9})?|\.\d{1,9}")


def preferred_wait(headers: Iterable[str]) -> float | None:
    """The `wait` preference of RFC 7240 `Prefer` headers, at most MAX_WAIT; None when there is
    none or it is unusable (not a number, 0). Other preferences and any parameters are ignored and,
    as the RFC asks, the first `wait` wins."""
    for preference in _split(",".join(headers), ","):
        name, _, value = _split(preference, ";")[0].partition("=")
        if name.strip().lower() == "wait":
            seconds = _seconds(value.strip().removeprefix('"').removesuffix('"').strip())
            return min(seconds, MAX_WAIT) if seconds else None
    return None


def applied_wait(seconds: float) -> str:
    """The `Preference-Applied` header's value for a wait of `seconds`."""
    return f"wait={seconds:g}"


def _seconds(text: str) -> float | None:
    return float(text) if _SECONDS.fullmatch(text) else None


def _split(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside double-quoted strings (where a backslash escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts
