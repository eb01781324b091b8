"""`make up`'s script: it runs the web app, a worker and the webhooks worker; Ctrl-C stops them
promptly and quietly, and a second `make up` on the same Redis database is told that it shares the
queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shared.jobs import workers
from tests.support.env import ROOT, TEST_SECRET_KEY
from tests.support.net import free_port

pytestmark = [pytest.mark.serial, pytest.mark.process]  # measures how fast things stop: alone on the machine


def test_ctrl_c_stops_promptly_and_a_shared_redis_is_announced(redis_url, tiny_models_dir, tmp_path):
    import redis

    # Another `make up` (its worker) already uses this database.
    workers.announce(redis.Redis.from_url(redis_url), "other@host", {"state": "idle"}, ttl=60)
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PORT": str(port),
        "MODELS": "tiny",
        "TINY_MODELS_DIR": str(tiny_models_dir),
        "VENV": str(Path(sys.executable).parent.parent),
        "SECRET_KEY": TEST_SECRET_KEY,
        "STORAGE_URL": f"file://{tmp_path}/data",
        "WEB_CONCURRENCY": "2",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "ENV_FILE": str(tmp_path / ".env"),  # not the checkout's
    }
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        # Its own session, like a terminal's foreground job: Ctrl-C signals the whole group.
        proc = subprocess.Popen(
            ["bash", "scripts/up.sh"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A terminal's Ctrl-C reaches a script that can trap it; a test run started in the background
            # of a shell inherits SIGINT ignored, which bash may then not trap ("up: stopping" never runs).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 90
        # Two Celery workers say "ready.": the GPU worker and the webhooks worker.
        while log.read_bytes().count(b"ready.") < 2 or not _answers(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # an impatient second Ctrl-C still waits for the workers
        assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    print(f"Ctrl-C to exit: {stopped_in:.1f} s")
    assert stopped_in < 10, text[-3000:]
    assert "Traceback" not in text and "SIGKILL" not in text, text[-3000:]
    assert "1 worker(s) already use" in text and "REDIS_URL=redis://127.0.0.1:6379/1" in text
    assert "webhooks@" in text and ". deliver_webhook" in text, "the webhooks worker ran, with its task"
    assert "still stopping" in text
    assert not _answers(port)
    # What it used is in its .env, for `flask --app web.app keys create` and the next `make up`.
    saved = (tmp_path / ".env").read_text().splitlines()
    assert f"REDIS_URL={redis_url}" in saved and f"PORT={port}" in saved


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
