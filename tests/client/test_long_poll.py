"""narrator_client's `wait` follows a job with long polls (`?wait=`), and paces a service that
answers without waiting (one from before long polls) with its old backoff."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from narrator_client import Client, Job, WaitTimeout
from tests.support.photos import photo


class Recorder:
    """A Client's `sleep` that only notes what it was asked to wait."""

    def __init__(self):
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def counting(client: Client) -> list[str]:
    urls: list[str] = []
    client.session.hooks["response"].append(lambda response, *a, **k: urls.append(response.url))
    return urls


def test_wait_follows_the_job_with_long_polls(web_server):
    app, base = web_server
    store = app.extensions["narrator"].jobs
    sleep = Recorder()
    client = Client(base, sleep=sleep)
    job = client.submit(photo())

    def worker():  # the worker's part, through the store, a step every 0.3 s
        steps = [
            lambda: store.claim("test-worker", first=job.id),
            lambda: store.progress(job.id, "story", caption="A photo."),
            lambda: store.progress(job.id, "speech", story="Once upon a time."),
            lambda: store.succeed(job.id, f"audio/{job.id}.mp3", 1.0),
        ]
        for step in steps:
            time.sleep(0.3)
            assert step()

    playing = threading.Thread(target=worker)
    playing.start()
    urls, updates = counting(client), []
    started = time.monotonic()
    done = client.wait(job.id, timeout=60, on_update=lambda j: updates.append((j.status, j.stage)))
    playing.join()
    assert done.status == "succeeded" and time.monotonic() - started < 4
    assert updates == [  # the first request already waits for a change from "queued"
        ("running", "caption"),
        ("running", "story"),
        ("running", "speech"),
        ("succeeded", None),
    ]
    assert sleep.slept == []  # every answer came when the job changed: nothing to sleep for
    assert len(urls) == 4 and all(parse_qs(urlsplit(url).query)["wait"] == ["30.0"] for url in urls), urls


def test_a_long_poll_may_outlast_the_clients_request_timeout(web_server):
    _, base = web_server
    client = Client(base, timeout=1.0, sleep=Recorder())  # the service holds each request longer
    job = client.submit(photo())  # no worker: it stays queued
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        client.wait(job.id, timeout=2.0)
    assert 2.0 <= time.monotonic() - started < 4.0


def test_submit_can_wait(web_server):
    _, base = web_server
    client = Client(base)
    started = time.monotonic()
    job = client.submit(photo(), wait=0.5)  # Prefer: wait=0.5; no worker, so it waits it out
    assert job.status == "queued" and 0.5 <= time.monotonic() - started < 1.5


JOB = {name: None for name in Job.model_fields} | {
    "id": "j1",
    "created_at": "2024-01-01T00:00:00.000Z",
    "timings": {},
    "words": 40,
    "attempts": 0,
    "cached": False,
}


class OldService(BaseHTTPRequestHandler):
    """A service from before long polls: answers at once, whatever `wait` says; the job succeeds at
    the fifth request."""

    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        status = "succeeded" if len(self.requests) >= 5 else "queued"
        body = json.dumps({**JOB, "status": status}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_service_that_does_not_wait_is_polled_with_backoff():
    OldService.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), OldService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sleep = Recorder()
        client = Client(f"http://127.0.0.1:{server.server_port}", sleep=sleep)
        assert client.wait("j1", timeout=60).status == "succeeded"
    finally:
        server.shutdown()
    assert len(OldService.requests) == 5 and all("wait=" in path for path in OldService.requests)
    # The first answer has nothing to compare with; each later unchanged one that came at once
    # means the service did not wait: back off as before long polls.
    assert sleep.slept == [0.25, 0.5, 1.0], sleep.slept
