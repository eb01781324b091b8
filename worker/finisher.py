"""One batch finishing in the background while the next one uses the GPU.

A batch's GPU stages run in the Celery task; what follows them (MP3 encoding, uploads, recording
each job's result, webhooks) needs only CPUs, storage and Redis, so the task hands it to the
finisher and returns, and the worker takes its next wake-up at once. The finisher runs one batch
at a time, one deep: `submit` first waits for the previous batch's finish, so at most one batch is
finishing while the next one is on the GPU (bounded memory, bounded leases held). A job whose
earlier run died runs only once nothing is finishing (worker/runner.py, run_wakeup): should it be a
photo that kills workers, it takes no innocent batch down with it.

The thread is a daemon: a worker that dies (SIGKILL) loses the finishing batch as it would lose a
running one (its leases lapse and the reaper requeues it). A stopping worker waits for it
(worker/app.py, `leave`), within WORKER_STOP_GRACE (worker/heartbeat.py hands it back after).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Finisher:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one hand-over at a time (a thread pool's tasks could race)

    def submit(self, work: Callable[[], object]) -> None:
        """Run `work` in the background once the previous one is done (back-pressure: this waits)."""
        with self._lock:
            self.wait()
            self._thread = threading.Thread(target=self._run, args=(work,), name="finisher", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the batch finishing now, if any; whether none is left running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    @staticmethod
    def _run(work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:  # the work ends its own jobs; this is a bug's last stop, not a path
            log.exception("finishing a batch failed")
