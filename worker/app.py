"""The Celery app the workers run: `celery -A worker.app worker --pool solo`.

GPU workers: CUDA does not survive fork, so run one worker process per GPU with the solo pool
and pin it with CUDA_VISIBLE_DEVICES; never the default prefork pool with CUDA. JOB_TIME_LIMIT, on
which the job leases rely, is enforced in the solo pool, where jobs run in the main thread.
"""
from __future__ import annotations

import logging
import sys

from celery.signals import worker_init

from shared.queue import make_celery
from shared.settings import get_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = make_celery(get_settings(), name="worker")
app.conf.worker_pool = "solo"  # the default pool for GPU workers; --pool overrides it
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
celery = app


@worker_init.connect
def check_configuration(**_) -> None:
    # A bad DEVICE/QUANTIZE combination stops the worker at start-up, not in the middle of a job.
    # Celery logs and swallows exceptions from signal handlers, so leave with SystemExit instead.
    from worker.context import get_context
    from worker.engine.devices import ConfigError

    try:
        get_context().engine
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
