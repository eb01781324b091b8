"""The Celery app the workers run: `celery -A worker.app worker --pool solo`.

GPU workers: CUDA does not survive fork, so run one worker process per GPU with the solo pool
(or threads) and pin it with CUDA_VISIBLE_DEVICES; never the default prefork pool with CUDA.
"""
from __future__ import annotations

import logging

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
    from worker.context import get_context

    get_context().engine
