"""A real Celery worker's metrics endpoint (WORKER_METRICS_PORT) after one job end to end."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import pytest

from tests.support.env import ROOT
from tests.support.metrics import post, scrape, value
from tests.support.net import free_port
from tests.support.servers import celery_worker_command

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"file://{tmp_path}/data"  # one backend is enough here: nothing below depends on it


@pytest.fixture
def metrics_worker(service_env, request) -> str:
    """The worker of celery_worker_process, serving its metrics; yields their base URL."""
    port = free_port()
    service_env["WORKER_METRICS_PORT"] = str(port)
    request.getfixturevalue("celery_worker_process")
    return f"http://127.0.0.1:{port}"


def wait_until_finished(base: str, job_id: str, timeout: float = 120) -> dict:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/v1/jobs/{job_id}", timeout=30) as response:
            job = json.load(response)
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish in {timeout}s")


def test_worker_metrics_after_one_job(metrics_worker, web_server, service_env):
    import json

    _, base = web_server
    text, headers = scrape(metrics_worker)
    assert headers["Content-Type"].startswith("text/plain")
    assert value(text, "narrator_jobs_finished_total", status="succeeded") == 0
    for model in ("caption", "story", "speech"):
        assert value(text, "narrator_model_load_seconds", model=model) > 0, model

    status, body = post(base, "/api/v1/jobs", {})
    assert status == 202
    job = wait_until_finished(base, json.loads(body)["id"])
    assert job["status"] == "succeeded", job

    text, _ = scrape(metrics_worker)
    assert value(text, "narrator_jobs_finished_total", status="succeeded") == 1
    assert value(text, "narrator_jobs_finished_total") == 1
    assert value(text, "narrator_job_seconds_count", status="succeeded") == 1
    assert 0 < value(text, "narrator_job_seconds_sum", status="succeeded") < 120
    for stage in ("caption", "story", "speech", "encode", "upload"):
        assert value(text, "narrator_stage_seconds_count", stage=stage) == 1, stage
        assert value(text, "narrator_stage_seconds_sum", stage=stage) > 0, stage
    assert value(text, "narrator_batch_size_count") == 1 and value(text, "narrator_batch_size_sum") == 1
    assert value(text, "narrator_queue_depth") == 0
    assert "narrator_gpu_memory_bytes" not in text, "a CPU worker has no GPU memory to report"
    assert value(text, "process_resident_memory_bytes") > 0
    # The web's scrape sees the worker through its heartbeat.
    web_text, _ = scrape(base)
    assert value(web_text, "narrator_workers_live") == 1 and value(web_text, "narrator_workers_ready") == 1

    # A second worker process on this host with the same port stops at once, before loading any
    # model, with a message that says what to do.
    env = {**os.environ, **service_env, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        celery_worker_command("clash@%h"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"WORKER_METRICS_PORT={service_env['WORKER_METRICS_PORT']}" in result.stderr
    assert "a port of its own" in result.stderr
