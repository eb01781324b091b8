"""Batches finishing in the background while the next one uses the GPU.

A batch's GPU stages run in the Celery task; what follows them (MP3 encoding, uploads, recording
each job's result, webhooks) needs only CPUs, storage and Redis, so the task hands it to the
finisher and returns, and the worker takes its next wake-up at once. The finisher runs one batch
at a time, in the order handed over, and holds DEPTH batches at most (the one finishing and the
next, waiting its turn): `submit` waits while it is full, so a batch stuck in upload retries
(storage down, STORAGE_RETRY_SECONDS) still lets the batch after it use the GPU, while memory and
the leases held stay bounded (DEPTH batches finishing or waiting, one on the GPU). A job whose
earlier run died runs only once nothing is finishing (worker/runner.py, run_wakeup): should it be a
photo that kills workers, it takes no innocent batch down with it.

The thread is a daemon: a worker that dies (SIGKILL) loses the batches it was finishing as it would
lose a running one (their leases lapse and the reaper requeues them). A stopping worker waits for
them (worker/app.py, `leave`), within WORKER_STOP_GRACE (worker/heartbeat.py hands them back after).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)
DEPTH = 2  # batches finishing or waiting their turn; a third hand-over waits


class Finisher:
    def __init__(self) -> None:
        self._works: deque[Callable[[], object]] = deque()  # the one finishing first, then those waiting
        self._changed = threading.Condition()
        self._running = False  # whether the thread is up; it leaves once nothing is left to finish

    def submit(self, work: Callable[[], object]) -> None:
        """Finish `work` in the background after those handed over before it (back-pressure: this
        waits while DEPTH batches are finishing or waiting)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._works) < DEPTH)
            self._works.append(work)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="finisher", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every batch handed over to finish; whether none is left."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._works, timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._works:
                    self._running = False
                    return
                work = self._works[0]  # stays counted until it is done: the back-pressure counts it
            try:
                work()
            except BaseException:  # the work ends its own jobs; this is a bug's last stop, not a path
                # (BaseException too: a thread that died here would leave the batches after it unfinished)
                log.exception("finishing a batch failed")
            finally:
                with self._changed:
                    self._works.popleft()
                    self._changed.notify_all()
