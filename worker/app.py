"""The Celery app the workers run: `celery -A worker.app worker --pool solo`.

GPU workers: CUDA does not survive fork, so run one worker process per GPU with the solo pool
and pin it with CUDA_VISIBLE_DEVICES. The job leases need the heartbeat thread to live in the
process that runs the jobs, so the prefork pool is refused.

Start-up: check the configuration, start the heartbeat, load the three models; only then does the
worker take messages. A worker whose models cannot load records why in Redis (/readyz shows it)
and exits with status 2 instead of failing every job it would take.

Shutdown (SIGTERM): take no new jobs, let the running batch end and the batch finishing in the
background (worker/finisher.py) end too, within WORKER_STOP_GRACE (worker/heartbeat.py).
"""

from __future__ import annotations

import logging
import sys

from celery.signals import worker_init, worker_shutdown, worker_shutting_down

from shared.jobs import workers
from shared.jobs.queue import make_celery
from shared.settings import get_settings
from shared.styles import from_settings
from worker import metrics as worker_metrics

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("worker")

app = make_celery(get_settings(), name="worker")
# A wake-up is taken with a plain BRPOP: kombu's ack emulation (a copy of every message in an
# unacked hash, removed again on the ack: two transactions per message) would guard messages
# nothing depends on (shared/jobs/queue.py). The webhooks worker keeps it: a delivery is acked late.
app.conf.broker_transport_options = {**app.conf.broker_transport_options, "ack_emulation": False}
app.conf.worker_pool = "solo"  # the default pool for GPU workers; --pool overrides it
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
celery = app


def _refuse(message: str) -> None:
    # Celery logs and swallows exceptions from signal handlers, so leave with SystemExit instead.
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


@worker_init.connect
def start_worker(sender=None, **_) -> None:
    from worker.context import get_context
    from worker.engine.devices import ConfigError

    pool = getattr(sender, "pool_cls", "solo")  # a name or the class (celery.concurrency.<name>)
    pool = pool if isinstance(pool, str) else getattr(pool, "__module__", "").rsplit(".", 1)[-1]
    if not any(name in pool.lower() for name in ("solo", "thread")):
        _refuse(f"--pool {pool} is not supported: run one worker process per GPU with --pool solo")
    ctx = get_context()
    try:
        engine = ctx.engine  # a bad DEVICE/QUANTIZE combination stops the worker here
    except ConfigError as exc:
        _refuse(str(exc))
    try:  # before the models load, so a port clash stops the worker at once
        worker_metrics.start(ctx.settings, ctx.store.queued_count)  # WORKER_METRICS_PORT (worker/metrics.py)
    except OSError as exc:
        _refuse(str(exc))
    heartbeat = ctx.heartbeat
    heartbeat.state = "loading"
    heartbeat.start()
    try:
        seconds = engine.load()
    except Exception as exc:  # ModelLoadError names the model and the fixes; anything else is shown as is
        message = (
            str(exc) if isinstance(exc, ConfigError) else f"could not load the models ({type(exc).__name__}: {exc})"
        )
        log.error("%s", message)
        try:
            workers.record_model_error(ctx.redis, heartbeat.worker, message)
        except Exception as redis_exc:
            log.warning("could not record the model error in Redis: %s", redis_exc)
        heartbeat.retire()
        _refuse(message)
    worker_metrics.models_loaded(seconds)
    heartbeat.state = "ready"
    heartbeat._quietly(heartbeat.announce)  # /readyz shows it at once, not at the next beat
    log.info(
        "models loaded in %.1fs (%s); stories: %s",
        sum(seconds.values()),
        ", ".join(f"{name} {value:.1f}s" for name, value in seconds.items()),
        story_setup(ctx.settings),
    )


def story_setup(settings) -> str:
    """Which story model runs, in words: the base model, with STORY_ADAPTER, or with its styles."""
    styles = from_settings(settings)
    if styles.names:
        return f"{settings.story_model} with the styles {', '.join(styles.names)} (default {styles.default})"
    if settings.story_adapter:
        return f"{settings.story_model} with the adapter {settings.story_adapter}"
    return f"{settings.story_model} (no adapter)"


@worker_shutting_down.connect
def stop_taking_jobs(**_) -> None:
    from worker.context import get_context

    get_context().heartbeat.stop()


@worker_shutdown.connect
def leave(**_) -> None:
    from worker.context import get_context

    ctx = get_context()
    # The last batch may still be finishing in the background: let it end before the process does.
    # stop() (a no-op after SIGTERM) bounds the wait: after WORKER_STOP_GRACE the heartbeat hands
    # the jobs still held back to the queue and exits.
    ctx.heartbeat.stop()
    ctx.finisher.wait()
    ctx.heartbeat.retire()
