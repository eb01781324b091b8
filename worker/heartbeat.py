"""The one recovery mechanism: a heartbeat thread per worker process.

Every HEARTBEAT_SECONDS it
- renews the lease (LEASE_SECONDS) of every job this process is running,
- announces the worker as alive, with its state (what /readyz shows),
- and, one worker at a time, reaps: every job whose lease lapsed (its worker was killed, or its host
  vanished from the network) goes back to the queue with a fresh wake-up, or fails once it has used
  MAX_ATTEMPTS; every queued job whose wake-up was lost (Redis restarted, a worker died holding
  it) gets a new one.

A heartbeat that stops (its thread died, or a round has made no progress for two leases) cannot
keep leases: the worker then exits (code 70) rather than take jobs it cannot hold, so the other workers reap its jobs
and a supervisor starts it again.

On SIGTERM (`stop`) the worker takes no new jobs; a batch still held after WORKER_STOP_GRACE
(running, or finishing in the background) is handed back to the queue at once and the process exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from shared.jobs import JobStore, workers
from shared.settings import Settings

log = logging.getLogger(__name__)
REAPER_LOCK = "jobs:reaper"
WAKE_BATCH = 64  # wake-ups the reaper sends for lost messages per round, at most
EXIT_HEARTBEAT_STOPPED = 70  # EX_SOFTWARE


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        wake: Callable[[Iterable[str]], None],
        queue_length: Callable[[], int],
    ):
        self.store, self.settings, self.wake, self.queue_length = store, settings, wake, queue_length
        self.worker = worker_id()
        self.state = "starting"
        self.stopping = False
        self._held: dict[str, list[str]] = {}  # claimant -> job ids
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # When the heartbeat last showed progress (a round started, a step of one ended). Two leases,
        # not one, before it counts as hung: a Redis failover holds each call of a round in its
        # client's retries for up to about 10 s (worker/context.py), longer than a short lease.
        self._alive_at = time.monotonic()

    def new_claimant(self) -> str:
        # One per batch: a late write of an earlier run of this worker cannot pass for this one.
        return f"{self.worker}:{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()

    def may_take_jobs(self) -> bool:
        """False once stopping. A started heartbeat that is no longer beating ends the process here,
        before a claim: the jobs would be claimed with leases nobody renews."""
        if self.stopping:
            return False
        thread = self._thread
        if thread is not None and self.state != "stopped":
            if not thread.is_alive():
                self._exit("the heartbeat thread died")
            if time.monotonic() - self._alive_at > 2 * self.settings.lease_seconds:
                self._exit(f"no heartbeat for over two leases ({2 * self.settings.lease_seconds:g}s)")
        return True

    def _exit(self, why: str) -> None:
        log.critical("%s: this worker can no longer keep its jobs' leases; exiting so they are reaped", why)
        logging.shutdown()
        os._exit(EXIT_HEARTBEAT_STOPPED)

    def hold(self, claimant: str, job_ids: list[str]) -> None:
        """Keep the leases of a batch alive until `release`: its GPU stages and its finishing, which
        may end on another thread (worker/finisher.py)."""
        with self._lock:
            self._held[claimant] = list(job_ids)

    def release(self, claimant: str) -> None:
        with self._lock:
            self._held.pop(claimant, None)

    def beat(self) -> None:
        """One round; the thread calls it every HEARTBEAT_SECONDS (tests may call it directly)."""
        with self._lock:
            held = {claimant: list(ids) for claimant, ids in self._held.items()}
        for claimant, ids in held.items():
            lost = self.store.renew(claimant, ids, self.settings.lease_seconds)
            self._alive_at = time.monotonic()
            if lost:
                log.info("no longer holding %s (canceled, or taken back)", ", ".join(sorted(lost)))
        self.announce(sum(len(ids) for ids in held.values()))
        self._alive_at = time.monotonic()
        if self.store.redis.set(REAPER_LOCK, self.worker, nx=True, px=int(self.settings.heartbeat_seconds * 900)):
            self.reap()

    def announce(self, busy: int = 0) -> None:
        workers.announce(
            self.store.redis,
            self.worker,
            {"state": "busy" if busy else self.state, "jobs": busy},
            ttl=self.settings.lease_seconds,
        )

    def reap(self) -> None:
        # The jobs it fails get their webhooks from the store (its notify).
        requeued, failed = self.store.reap(self.settings.max_attempts)
        for job_id in failed:
            log.error("job %s failed: its worker died on each of its %d attempts", job_id, self.settings.max_attempts)
        if requeued:
            log.warning("requeued %d job(s) whose worker stopped beating: %s", len(requeued), ", ".join(requeued))
        # Queued jobs with no wake-up left in the broker lost it: send new ones (spares are harmless).
        lost = [] if self.queue_length() else self.store.queued_ids(WAKE_BATCH)
        self.wake([*requeued, *(i for i in lost if i not in requeued)])

    def stop(self) -> None:
        """SIGTERM: take no new jobs; hand back what is still running after the grace period."""
        if self.stopping:
            return
        self.stopping = True
        threading.Thread(target=self._hand_back_after_grace, name="stop-grace", daemon=True).start()

    def _hand_back_after_grace(self) -> None:
        deadline = time.monotonic() + self.settings.worker_stop_grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._held:
                    return  # the batches finished: Celery exits (worker/app.py's leave waits for the finisher)
            time.sleep(0.1)
        with self._lock:
            held = {claimant: list(ids) for claimant, ids in self._held.items()}
        handed = [
            job_id
            for claimant, ids in held.items()
            for job_id in ids
            if self._quietly(self.store.release, job_id, claimant)
        ]
        self._quietly(self.wake, handed)
        self._quietly(workers.retire, self.store.redis, self.worker)
        log.warning(
            "stopping: handed %d job(s) back to the queue after %gs: %s",
            len(handed),
            self.settings.worker_stop_grace,
            ", ".join(handed),
        )
        logging.shutdown()
        os._exit(0)  # a batch cannot be interrupted safely mid-forward pass or mid-upload; its jobs are queued again

    def retire(self) -> None:
        self.state = "stopped"  # the thread stops announcing this worker
        self._quietly(workers.retire, self.store.redis, self.worker)

    def _run(self) -> None:
        try:
            while self.state != "stopped":
                started = self._alive_at = time.monotonic()
                try:
                    self.beat()
                except RedisError as exc:  # Redis restarting: the next beat tries again
                    log.warning("heartbeat: Redis unavailable (%s)", exc)
                except Exception:  # an error in one round must not end the heartbeat
                    log.exception("heartbeat failed")
                time.sleep(max(0.0, self.settings.heartbeat_seconds - (time.monotonic() - started)))
        finally:
            if self.state != "stopped":  # something no round catches ended the thread
                self._exit("the heartbeat thread died")

    @staticmethod
    def _quietly(action, *args):
        try:
            return action(*args)
        except Exception as exc:
            log.warning("%s failed: %s", getattr(action, "__name__", action), exc)
            return None
