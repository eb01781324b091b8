"""GET /metrics over real HTTP: the web app's own server, and real gunicorn in multiprocess mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.support.env import ROOT
from tests.support.metrics import has, post, scrape, value
from tests.support.net import free_port, wait_for_port
from tests.support.photos import photo

pytestmark = [pytest.mark.timeout(120), pytest.mark.process]  # gunicorn


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"file://{tmp_path}/data"  # one backend is enough here: nothing below depends on it


def get_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_metrics_count_requests_by_route_submits_by_outcome_and_show_the_queue(web_server):
    app, base = web_server
    before, headers = scrape(base)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")

    status, body = post(base, "/api/v1/jobs", {})
    assert status == 202
    job_id = json.loads(body)["id"]
    status, body = post(base, "/api/v1/jobs", {"words": "5"})
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_words"
    # The form answers in HTML, without the code: it is counted all the same.
    status, _ = post(base, "/jobs", {"words": "5"}, {"Origin": base})
    assert status == 400
    # So is an album whose second photo is not one (checked before any job is made).
    album = [("image", ("a.jpg", photo(1), "image/jpeg")), ("image", ("b.jpg", b"not a photo", "image/jpeg"))]
    refused = requests.post(f"{base}/jobs", files=album, headers={"Origin": base}, timeout=30)
    assert refused.status_code == 415, refused.text[:300]
    assert get_status(f"{base}/api/v1/jobs/{job_id}") == 200
    assert get_status(f"{base}/no/such/{job_id}") == 404

    after, _ = scrape(base)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("narrator_jobs_submitted_total", source="api") == 1
    assert delta("narrator_jobs_rejected_total", source="api", code="invalid_words") == 1
    assert delta("narrator_jobs_rejected_total", source="form", code="invalid_words") == 1
    assert delta("narrator_jobs_rejected_total", source="form", code="not_an_image") == 1  # its code, not http_415
    assert delta("narrator_jobs_rejected_total") == 3
    # Route templates, never the raw path: no job id anywhere in the scrape.
    assert job_id not in after
    assert delta("narrator_http_requests_total", route="/api/v1/jobs/<job_id>", method="GET", status="200") == 1
    assert delta("narrator_http_requests_total", route="/api/v1/jobs", method="POST", status="202") == 1
    assert delta("narrator_http_requests_total", route="/api/v1/jobs", method="POST", status="400") == 1
    assert delta("narrator_http_requests_total", route="<unmatched>", status="404") == 1
    assert delta("narrator_http_request_duration_seconds_count", route="/api/v1/jobs", method="POST") == 2
    assert delta("narrator_http_request_duration_seconds_count", route="/api/v1/jobs/<job_id>") == 1
    # Read from Redis at scrape time: the one queued job (no worker runs here).
    svc = app.extensions["narrator"]
    assert value(after, "narrator_queue_depth") == svc.jobs.queued_count() == 1
    assert value(after, "narrator_redis_up") == 1
    assert has(after, "narrator_workers_live") and value(after, "narrator_workers_live") == 0
    post(base, "/api/v1/jobs", {})
    assert value(scrape(base)[0], "narrator_queue_depth") == 2


def test_metrics_token_guards_the_scrape_and_is_not_taken_for_an_api_key(service_env, request):
    service_env["METRICS_TOKEN"] = "scrape-secret"
    service_env["REQUIRE_API_KEY"] = "true"
    _, base = request.getfixturevalue("web_server")
    assert get_status(f"{base}/metrics") == 401
    assert get_status(f"{base}/metrics", {"Authorization": "Bearer wrong"}) == 401
    text, _ = scrape(base, {"Authorization": "Bearer scrape-secret"})
    assert has(text, "narrator_queue_depth")
    # An API request with that token is still refused: it is no API key.
    assert get_status(f"{base}/api/v1/jobs", {"Authorization": "Bearer scrape-secret"}) == 401


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _booted_workers(master: int, deadline: float) -> set[int]:
    """The two worker processes, once both have imported the app (Pillow is mapped): one that is
    still importing it ignores SIGTERM until gunicorn's graceful timeout (30 s) runs out."""
    while True:
        pids = _children(master)
        try:
            if len(pids) == 2 and all("_imaging" in Path(f"/proc/{p}/maps").read_text() for p in pids):
                return pids
        except OSError:
            pass
        assert time.monotonic() < deadline, "gunicorn's workers did not start"
        time.sleep(0.1)


@contextmanager
def gunicorn(service_env: dict, tmp_path: Path, **env: str):
    """`gunicorn -c web/gunicorn_conf.py` with two processes; yields (master process, base URL)."""
    port = free_port()
    full_env = {**os.environ, **service_env, "BIND": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "2", **env}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    log = tmp_path / f"gunicorn-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn_conf.py", "web.app:create_app()"],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        _booted_workers(proc.pid, time.monotonic() + 60)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=40)


def test_gunicorn_processes_add_up_in_one_scrape(service_env, tmp_path):
    """Two gevent processes; the first pair is replaced halfway, so the counts come from processes
    alive and exited, and every scrape (whichever process answers it) has them all. No
    PROMETHEUS_MULTIPROC_DIR is given: the config makes a folder of its own."""
    with gunicorn(service_env, tmp_path, PROMETHEUS_MULTIPROC_DIR=None) as (proc, base):
        first = _children(proc.pid)
        for _ in range(10):
            assert get_status(f"{base}/healthz") == 200
        for pid in first:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _children(proc.pid) & first:
            assert time.monotonic() < deadline, "the first workers did not exit"
            time.sleep(0.1)
        _booted_workers(proc.pid, deadline)
        for _ in range(10):
            assert get_status(f"{base}/healthz") == 200
        for _ in range(3):
            text, _ = scrape(base)
            assert value(text, "narrator_http_requests_total", route="/healthz", status="200") == 20
            assert value(text, "narrator_http_request_duration_seconds_count", route="/healthz") == 20


def test_gunicorn_starts_from_zero_in_a_given_multiprocess_folder(service_env, tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    # A count left in the folder by an earlier run must not be added to this run's.
    stale = "from web.middleware.metrics import REQUESTS; REQUESTS.labels('/healthz', 'GET', '200').inc(1000)"
    subprocess.run(
        [sys.executable, "-c", stale],
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        check=True,
    )
    assert list(directory.glob("counter_*.db"))
    with gunicorn(service_env, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(directory)) as (_, base):
        assert get_status(f"{base}/healthz") == 200
        text, _ = scrape(base)
        assert value(text, "narrator_http_requests_total", route="/healthz") == 1
        assert list(directory.glob("counter_*.db")), "the counts live in the given folder"
