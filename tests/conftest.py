"""Fixtures for real parts: a Redis database, moto's S3 server over HTTP, the offline tiny models.

Nothing here reaches a model hub: HF_HUB_OFFLINE is set before transformers can be imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))
TEST_SECRET_KEY = "test-secret-key-" + "x" * 32  # signs session cookies (SECRET_KEY is required)
GENEROUS_RATE_LIMIT = "10000/second"
# Every test submits from 127.0.0.1, most of them faster than a person: the per-address limit (on top
# of the per-owner ones, which service_env sets) is generous for every app and worker the tests start,
# unless a test sets its own (tests/web/test_rate_limits.py).
os.environ["SUBMIT_ADDRESS_RATE_LIMIT"] = GENEROUS_RATE_LIMIT


def requires_tool(found: bool, name: str):
    """Skip without the tool, except under `make test` (REQUIRE_SYSTEM_TOOLS=1), which installs it:
    there a missing tool fails the run instead of letting required tests quietly skip."""
    if not found and os.environ.get("REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(f"{name} is missing; `make test` should have installed it", pytrace=False)
    return pytest.mark.skipif(not found, reason=f"{name} is not installed (make test installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {timeout}s")


@contextmanager
def serving(command: list[str], port: int, env: dict | None = None):
    """A server process of the test session's own, up once its port answers, stopped afterwards."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """Random-weight BLIP, Qwen2 and VITS models, built offline once per test session."""
    from worker.tiny_models import build_all

    out = tmp_path_factory.mktemp("tiny-models")
    build_all(out, seed=0)
    return out


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory) -> str:
    """A Redis of the test session's own: a private redis-server on a free port when the binary is
    here (so parallel test runs never flush each other's data), else REDIS_URL's server, database
    TEST_REDIS_DB."""
    import redis

    binary = shutil.which("redis-server")
    if binary:
        port = free_port()
        workdir = tmp_path_factory.mktemp("redis")
        with serving(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            port,
        ):
            yield f"redis://127.0.0.1:{port}/{TEST_REDIS_DB}"
        return
    parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    url = urlunsplit((parts.scheme, parts.netloc, f"/{TEST_REDIS_DB}", "", ""))
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:  # make test starts one; a bare pytest run may not have it
        pytest.fail(f"no Redis answers at {url}: {exc}")
    yield url


@pytest.fixture
def redis_url(redis_base_url) -> str:
    """A flushed test database for each test."""
    import redis

    client = redis.Redis.from_url(redis_base_url)
    client.flushdb()
    yield redis_base_url
    client.flushdb()


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's standalone S3 server, spoken to over real HTTP by boto3."""
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    with serving([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, env=env):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch) -> str:
    """Standard AWS variables pointing boto3 at moto; returns a fresh s3:// storage URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return f"s3://test-{uuid.uuid4().hex[:12]}/narrator"


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path) -> str:
    """Both storage backends: a local folder and moto's S3 server."""
    if request.param == "s3":
        return request.getfixturevalue("s3_env")
    return f"file://{tmp_path}/data"


@pytest.fixture
def service_env(redis_url, storage_url, tiny_models_dir, tmp_path) -> dict:
    """The environment a worker and the web app share: test Redis, storage, the tiny models."""
    return {
        "REDIS_URL": redis_url,
        "STORAGE_URL": storage_url,
        "CAPTION_MODEL": str(tiny_models_dir / "caption"),
        "STORY_MODEL": str(tiny_models_dir / "story"),
        "SPEECH_MODEL": str(tiny_models_dir / "speech"),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "DEVICE": "cpu",
        "STORY_WORDS": "16",
        "JOB_TIME_LIMIT": "120",
        "SECRET_KEY": TEST_SECRET_KEY,
        # Generous: these tests submit and poll fast from one address (tests/web/test_rate_limits.py
        # checks the defaults).
        "SUBMIT_RATE_LIMIT": GENEROUS_RATE_LIMIT,
        "READ_RATE_LIMIT": GENEROUS_RATE_LIMIT,
    }


def celery_worker_command(hostname: str, app: str = "worker.app", *options: str) -> list[str]:
    """`celery worker` as every test runs it: the solo pool, no gossip, mingle or heartbeat (our
    leases and presence keys do that work), INFO logs that tests read for "ready."."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", *options, "--pool", "solo", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname", hostname,
    ]  # fmt: skip


@pytest.fixture
def celery_worker_process(service_env, tmp_path):
    """A real `celery -A worker.app worker` process on the test Redis (no eager mode)."""
    log = tmp_path / "worker.log"
    env = {**os.environ, **service_env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            celery_worker_command(f"test-{uuid.uuid4().hex[:8]}@%h"),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the Celery worker did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.2)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def create_api_key(env: dict, name: str) -> str:
    """A key made the way an operator makes one, `flask --app web.app keys create NAME` (with the
    test's REDIS_URL and SECRET_KEY): the key is the command's last line of output."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "web.app", "keys", "create", name],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def web_server(service_env):
    """The Flask app on a real threaded HTTP server; yields (app, base_url). Its PUBLIC_BASE_URL is
    the server's address, so the absolute URLs it gives (audio_url) can be fetched as they are."""
    import threading

    from werkzeug.serving import make_server

    from shared.settings import Settings
    from web.app import create_app

    server = make_server("127.0.0.1", 0, None, threaded=True)  # the app comes once the port is known
    base = f"http://127.0.0.1:{server.server_port}"
    app = create_app(Settings(**{k.lower(): v for k, v in service_env.items()}, public_base_url=base))
    server.app = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, base
    server.shutdown()
    thread.join(timeout=10)
