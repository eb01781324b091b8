"""A worker's Prometheus metrics, served on WORKER_METRICS_PORT (off when unset).

One worker process per GPU: on one host each needs its own port (9101, 9102, ...). A worker runs
in one process (the solo pool), so its own registry is scraped directly; nothing is shared.

The metrics and the queries to watch are in docs/metrics.md. narrator_queue_depth and
narrator_gpu_memory_bytes are read at scrape time.

Every observation swallows its own errors: a metric must never cost a job.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
for _collector in (ProcessCollector, PlatformCollector, GCCollector):
    _collector(registry=REGISTRY)
JOBS_FINISHED = Counter(
    "narrator_jobs_finished",
    "Jobs this worker ended: succeeded, failed, lost (canceled "
    "meanwhile, or taken back), missing (expired), abandoned (Redis lost)",
    ["status"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "narrator_job_seconds",
    "Seconds from submit to finish, queue wait included",
    ["status"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "narrator_stage_seconds",
    "Seconds per stage: caption, story, speech per batch; encode, upload per job",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "narrator_batch_size", "Jobs claimed per run", buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY
)
MODEL_LOAD = Gauge(
    "narrator_model_load_seconds", "Seconds the model took to load at start-up", ["model"], registry=REGISTRY
)
for _status in ("succeeded", "failed", "lost"):  # present from the start, so rate() has a zero to start from
    JOBS_FINISHED.labels(_status)


def _quietly(observe):
    @functools.wraps(observe)
    def wrapper(*args, **kwargs):
        try:
            observe(*args, **kwargs)
        except Exception as exc:
            log.warning("metrics: %s failed: %s", observe.__name__, exc)

    return wrapper


@_quietly
def batch_claimed(size: int) -> None:
    BATCH_SIZE.observe(size)


@_quietly
def stages_done(narrations) -> None:
    """One batch's narrations: the batch-wide stages once, each job's encode."""
    if not narrations:
        return
    for stage in ("caption", "story", "speech"):
        if stage in narrations[0].timings:
            STAGE_SECONDS.labels(stage).observe(narrations[0].timings[stage])
    for narration in narrations:
        if "encode" in narration.timings:
            STAGE_SECONDS.labels("encode").observe(narration.timings["encode"])


@contextmanager
def stage_timer(stage: str):
    start = time.perf_counter()
    yield
    _quietly(lambda: STAGE_SECONDS.labels(stage).observe(time.perf_counter() - start))()


@_quietly
def jobs_finished(outcomes: dict[str, str], ended) -> None:
    """Jobs of a run that ended (worker/runner.py calls it once per job: when its GPU part ended it,
    or when its finishing did); `ended`: the records of those that ended, as the run wrote them."""
    for status in outcomes.values():
        JOBS_FINISHED.labels(status).inc()
    for job in ended:  # the submit's time is the web's, the finish this run's
        if job.status in ("succeeded", "failed") and job.created_at and job.finished_at:
            JOB_SECONDS.labels(job.status.value).observe(max(0.0, job.finished_at - job.created_at))


@_quietly
def models_loaded(seconds: dict[str, float]) -> None:
    for model, value in seconds.items():
        MODEL_LOAD.labels(model).set(value)


class _Live:
    """Read at scrape time: GPU memory and the queue depth."""

    def __init__(self, queue_depth: Callable[[], int]):
        self.queue_depth = queue_depth

    def collect(self):
        try:
            memory = self._gpu_memory()
        except Exception as exc:
            log.warning("metrics: GPU memory unavailable: %s", exc)
            memory = None
        if memory is not None:
            yield memory
        try:
            depth = self.queue_depth()
        except Exception as exc:  # Redis away: the scrape still answers, without this gauge
            log.warning("metrics: queue depth unavailable: %s", exc)
            return
        yield GaugeMetricFamily("narrator_queue_depth", "Jobs waiting in the queue", value=depth)

    @staticmethod
    def _gpu_memory():
        torch = sys.modules.get("torch")  # only if the engine imported it: never imported here
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None  # a CPU worker, or CUDA not in use (yet)
        memory = GaugeMetricFamily(
            "narrator_gpu_memory_bytes", "GPU memory of this process (torch.cuda)", labels=["device", "kind"]
        )
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            memory.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
            memory.add_metric([device, "peak"], torch.cuda.max_memory_allocated(index))
            memory.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
            memory.add_metric([device, "total"], torch.cuda.get_device_properties(index).total_memory)
        return memory


def start(settings, queue_depth: Callable[[], int]) -> None:
    """Serve /metrics on WORKER_METRICS_PORT in a thread (nothing when unset). OSError, with a
    message for the operator, when the port cannot be had (another worker on this host has it?)."""
    port, bind = settings.worker_metrics_port, settings.worker_metrics_bind
    if port is None:
        return
    try:
        start_http_server(port, addr=bind, registry=REGISTRY)
    except OSError as exc:
        raise OSError(
            f"WORKER_METRICS_PORT={port} on {bind}: {exc.strerror or exc}; each worker process on "
            "a host needs a port of its own (9101, 9102, ...)"
        ) from None
    REGISTRY.register(_Live(queue_depth))
    log.info("metrics on http://%s:%d/metrics", bind, port)
