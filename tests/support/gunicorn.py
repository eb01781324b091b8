"""The web app as deployed: `gunicorn -c web/gunicorn_conf.py "web.app:create_app()"` (the committed
config: gevent workers) on a free port, for the tests that need the real server's answers (its
request limits: 414, 431; slow clients; memory per process)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.env import GENEROUS_RATE_LIMIT, ROOT, TEST_SECRET_KEY
from tests.support.net import free_port

CONF = ROOT / "web" / "gunicorn_conf.py"
WORKERS = 2
BOUNDARY = "testboundary7MA4YWxkTrZu0gW"


def multipart(data: bytes, filename: str = "photo.png", content_type: str = "image/png") -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    def workers(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return [int(pid) for pid in children]
        except OSError:  # no /proc/<pid>/task/<pid>/children: look at every process's parent
            found = []
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    found.append(int(stat.parent.name))
            return found

    def request(self, method: str, path: str, body: bytes | None = None, headers=None, timeout=30):
        """(status, body, seconds) over a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read(), time.monotonic() - started
        finally:
            conn.close()

    def submit(self, data: bytes, timeout=60):
        body = multipart(data)
        return self.request(
            "POST", "/api/v1/jobs", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, timeout=timeout
        )


@contextmanager
def gunicorn(tmp_path: Path, env: dict):
    port = free_port()
    log = tmp_path / f"gunicorn-{port}.log"
    full_env = {
        **os.environ,
        "SECRET_KEY": TEST_SECRET_KEY,
        "SUBMIT_RATE_LIMIT": GENEROUS_RATE_LIMIT,
        "READ_RATE_LIMIT": GENEROUS_RATE_LIMIT,
        **env,
        "BIND": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(WORKERS),
        "PYTHONUNBUFFERED": "1",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(CONF), "web.app:create_app()"],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:  # every worker has imported the app (Pillow is mapped) and one answers
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("gunicorn did not start:\n" + log.read_text()[-3000:])
            pids = server.workers()
            loaded = [pid for pid in pids if "_imaging" in _maps(pid)]
            if len(loaded) == WORKERS:
                try:
                    if server.request("GET", "/healthz", timeout=5)[0] == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""
