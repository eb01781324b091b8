"""The Celery app as workers run it: reliable settings, and a bad configuration refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # worker processes that must refuse to start

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
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "error: QUANTIZE=4bit needs a CUDA GPU" in result.stderr
    assert "ready." not in result.stderr + result.stdout


def test_a_pool_that_runs_jobs_in_other_processes_or_greenlets_is_refused(redis_url):
    # (`--pool prefork` is Celery's default name and maps to the configured solo pool.)
    env = dict(os.environ, REDIS_URL=redis_url, DEVICE="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "gevent"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--pool solo" in result.stderr


def test_a_worker_whose_models_cannot_load_says_why_and_stops(redis_url, tmp_path):
    """The hub unreachable (a listener that never answers): the worker names the model and the fixes
    within 30 s (on a slower machine: within one probe of the same worker started offline), records
    the error for /readyz, and exits instead of failing every job."""
    import socket

    import redis

    from shared.jobs.workers import last_model_error
    from tests.support.servers import connections_waiting, timed_runs, within_one_probe

    blackhole = socket.create_server(("127.0.0.1", 0))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CAPTION_MODEL", "STORY_MODEL", "SPEECH_MODEL")
    }
    env.update(
        REDIS_URL=redis_url,
        DEVICE="cpu",
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=f"http://127.0.0.1:{blackhole.getsockname()[1]}",
        HF_HUB_DISABLE_TELEMETRY="1",
    )

    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo"]
    # The same worker offline beside it (no probe): what its start costs on this machine right now.
    (result, took), (offline, offline_took) = timed_runs(
        (command, ROOT, env), (command, ROOT, {**env, "HF_HUB_OFFLINE": "1"}), timeout=90
    )
    probes = connections_waiting(blackhole)
    blackhole.close()
    print(
        f"\nmodels unreachable: the worker stopped after {took:.1f}s (process start included; "
        f"offline: {offline_took:.1f}s)"
    )
    # One probe of the hub, no retries: within the limit, or on a slow machine of the offline run.
    assert offline.returncode == 2 and result.returncode == 2
    assert probes == 1
    assert took < within_one_probe(30, offline_took)
    assert "CAPTION_MODEL=Salesforce/blip-image-captioning-base" in result.stderr
    assert "MODELS=tiny" in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr
    assert "ready." not in result.stderr + result.stdout
    recorded = last_model_error(redis.Redis.from_url(redis_url))
    assert recorded and "CAPTION_MODEL=" in recorded["message"] and "MODELS=tiny" in recorded["message"]


def test_the_load_line_names_the_story_model_s_adapter_or_styles():
    from shared.settings import Settings
    from worker.app import story_setup

    assert story_setup(Settings(story_model="m")) == "m (no adapter)"
    assert story_setup(Settings(story_model="m", story_adapter="adapters/mine")) == "m with the adapter adapters/mine"
    styled = Settings(story_model="m", story_styles="bedtime=a,adventure=b", story_default_style="adventure")
    assert story_setup(styled) == "m with the styles bedtime, adventure (default adventure)"
