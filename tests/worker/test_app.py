"""The Celery app as workers run it: reliable settings, and a bad configuration refused at start-up."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_app_is_configured_for_reliable_json_only_work():
    from worker.app import app

    conf = app.conf
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    # Messages are wake-ups, taken and acknowledged at once: recovery lives in the job store.
    assert not conf.task_acks_late and not app.tasks["narrate_job"].acks_late
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_connection_max_retries is None  # a worker outlives any Redis outage


def test_quantize_on_a_cpu_stops_the_worker_at_start_up(redis_url):
    env = dict(os.environ, REDIS_URL=redis_url, DEVICE="cpu", QUANTIZE="4bit")
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error: QUANTIZE=4bit needs a CUDA GPU" in result.stderr
    assert "ready." not in result.stderr + result.stdout


def test_a_pool_that_runs_jobs_in_other_processes_or_greenlets_is_refused(redis_url):
    # (`--pool prefork` is Celery's default name and maps to the configured solo pool.)
    env = dict(os.environ, REDIS_URL=redis_url, DEVICE="cpu")
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "gevent"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--pool solo" in result.stderr
