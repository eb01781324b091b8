"""A per-job time limit that also works in the solo pool, where Celery enforces none.

GPU workers run one process per GPU with the solo pool, and Celery's own time limits need
prefork. A SIGALRM timer raises SoftTimeLimitExceeded inside the job (signals reach only the
main thread, which is where the solo pool runs tasks); elsewhere Celery's limits apply.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from celery.exceptions import SoftTimeLimitExceeded


@contextmanager
def time_limit(seconds: float):
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise SoftTimeLimitExceeded(f"job exceeded its time limit of {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
