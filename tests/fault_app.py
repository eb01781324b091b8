"""The GPU worker with faults on demand, for the fault tests only:

    celery -A tests.fault_app worker --pool solo ...     (from the repository root)

It is worker.app itself, with two of the runner's steps wrapped, so production code knows no test
photo name. A photo uploaded as
- `__kill_worker__...` kills its worker (SIGKILL) once its batch's photos are read: a poison job;
- `__sleep_<seconds>__...` makes its batch's GPU part take that much longer;
- `__slow_finish_<seconds>__...` makes its batch's finishing (encode, upload) take that much longer;
- `__stop_heartbeat__...` ends its worker's heartbeat thread on the job's first run (as an error no
  round catches would).

The fault harness (tests/support/servers.py, Worker) starts this app for a worker whose environment has
TEST_FAULT_HOOKS=1, a switch of the tests' own that the service never reads.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time

from shared.storage import StorageUnavailable
from worker import runner
from worker.app import app, celery  # noqa: F401 (what `celery -A` looks for; importing it connects the signals)
from worker.context import get_context

log = logging.getLogger("fault_app")
_read_images, _finish_batch = runner.read_images, runner.finish_batch


def sleep_as_named(job, hook: str) -> None:
    """Sleep the seconds a photo named `__<hook>_<seconds>__...` asks for."""
    match = re.search(rf"__{hook}_(\d+(?:\.\d+)?)__", job.filename or "")
    if match:
        time.sleep(float(match.group(1)))


def end_the_thread() -> None:
    raise SystemExit("fault hook")  # not an Exception: nothing in a heartbeat round catches it


def read_images(jobs, *args, **kwargs):
    images = _read_images(jobs, *args, **kwargs)
    for job, image in zip(jobs, images, strict=True):
        if isinstance(image, (runner.JobFailed, StorageUnavailable)):
            continue  # a photo that could not be read ends its job, or hands it back, before any stage
        if (job.filename or "").startswith("__kill_worker__"):
            log.warning("fault hook: killing this worker for job %s", job.id)
            os.kill(os.getpid(), signal.SIGKILL)
        if (job.filename or "").startswith("__stop_heartbeat__") and job.attempts == 1:
            log.warning("fault hook: ending the heartbeat thread for job %s", job.id)
            get_context().heartbeat.beat = end_the_thread
        sleep_as_named(job, "sleep")
    return images


def finish_batch(narrated, *args, **kwargs):
    for job in narrated.jobs:
        sleep_as_named(job, "slow_finish")
    return _finish_batch(narrated, *args, **kwargs)


# run_stages and run_wakeup's finishing call these by their module names, so they take the wrapped ones.
runner.read_images, runner.finish_batch = read_images, finish_batch
