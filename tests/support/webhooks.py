"""Webhooks for tests: the server's signing secret, fast retry settings, a receiver on loopback that
records every request, the webhooks worker (a real `celery -A shared.webhooks.worker worker -Q webhooks` process) and
a signature check with standardwebhooks itself. tests/web/conftest.py offers the two fixtures to the
web tests."""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from shared.webhooks import new_secret
from tests.support.env import ROOT
from tests.support.servers import celery_worker_command

SERVER_SECRET = new_secret()  # WEBHOOK_SECRET: signs ownerless jobs' webhooks
FAST = {
    "WEBHOOK_RETRY_SECONDS": "0.2",
    "WEBHOOK_RETRY_MAX_SECONDS": "1",
    "WEBHOOK_TIMEOUT": "1",
    "WEBHOOK_MAX_ATTEMPTS": "5",
}


class Receiver:
    """A webhook receiver on 127.0.0.1. `answers[path]` lists the statuses to answer in turn (then
    200); `stall[path]` makes the first request to it wait that many seconds before answering."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.requests: list[dict] = []
        self.answers: dict[str, list[int]] = {}
        self.stall: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.monotonic()}
                    )
                    queue = receiver.answers.get(self.path)
                    status = queue.pop(0) if queue else 200
                    stall = receiver.stall.pop(self.path, 0)
                time.sleep(stall)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def to(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def wait_for(self, path: str, count: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.to(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        pytest.fail(f"{path} got {len(self.to(path))} request(s), expected {count}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def webhooks_worker(service_env, web_server, tmp_path):
    """A real `celery -A shared.webhooks.worker worker -Q webhooks` process; audio_url is absolute under the web
    server's address (PUBLIC_BASE_URL). Yields (process, log path, base URL)."""
    _, base = web_server
    log = tmp_path / "webhooks-worker.log"
    env = {**os.environ, **service_env, **FAST, "PUBLIC_BASE_URL": base, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            celery_worker_command(f"webhooks-{uuid.uuid4().hex[:8]}@%h", "shared.webhooks.worker", "-Q", "webhooks"),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the webhooks worker did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.1)
    yield proc, log, base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def verified(request: dict, secret: str = SERVER_SECRET) -> dict:
    """The payload, once standardwebhooks has verified the signature, id and timestamp."""
    return Webhook(secret).verify(request["body"], request["headers"])
