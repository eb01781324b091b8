"""The shared fixtures (a pytest plugin: tests/conftest.py registers it): a Redis of the session's own,
moto's S3 server over HTTP, the offline tiny models, the service's environment, a real Celery worker and
the web app on a real HTTP server.

Markers (pyproject.toml): a test that uses a fixture of PROCESS_FIXTURES is marked `process` here, so
`make test-fast` (-m "not process and not serial and not slow") leaves it out without anyone having to
remember; tests that start processes themselves carry the mark in their module.

Nothing here reaches a model hub: HF_HUB_OFFLINE is set before transformers can be imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per process (read when torch is imported, and inherited by the processes tests start):
# the suite runs a process per core, and OpenMP threads of processes sharing the cores spin waiting for
# each other: a tiny-model test took 25 s instead of 1.7 s beside another on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import itertools
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.env import GENEROUS_RATE_LIMIT, ROOT, TEST_REDIS_DB, TEST_SECRET_KEY
from tests.support.net import free_port, serving
from tests.support.servers import celery_worker_command

# Fixtures that start a real worker process: a test using one (directly or through another fixture) is
# marked `process`. Test modules may add theirs (tests/web/test_webhooks.py's webhooks_worker).
PROCESS_FIXTURES = {"celery_worker_process", "webhooks_worker", "tasks_worker", "metrics_worker"}
# The private Redis has this many databases: TEST_REDIS_DB for redis_url, the others for redis_databases.
DATABASES = 64


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


# --- models -------------------------------------------------------------------------------------------


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder `build` fills, once per test run: xdist's workers share it (the first one builds it,
    the others wait for it), so what is built must only ever be read."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.getbasetemp().parent / name  # this run's folder, above each worker's
    else:
        out = tmp_path_factory.mktemp(name)
    with FileLock(f"{out}.lock"):
        if not (out / ".built").exists():
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """Random-weight BLIP, Qwen2 and VITS models, built offline once per test run."""
    from worker.tiny_models import build_all

    return built_once(tmp_path_factory, "tiny-models", lambda out: build_all(out, seed=0))


# --- Redis --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory) -> Iterator[str]:
    """A Redis of the test session's own: a private redis-server on a free port when the binary is
    here (so parallel test runs never flush each other's data), else REDIS_URL's server, database
    TEST_REDIS_DB."""
    import redis

    binary = shutil.which("redis-server")
    if binary:
        port = free_port()
        workdir = tmp_path_factory.mktemp("redis")
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--databases", str(DATABASES), "--dir", str(workdir)]  # fmt: skip
        with serving(command, port):
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
def redis_url(redis_base_url) -> Iterator[str]:
    """A flushed test database for each test."""
    import redis

    client = redis.Redis.from_url(redis_base_url)
    client.flushdb()
    yield redis_base_url
    client.flushdb()


@pytest.fixture(scope="session")
def redis_databases(redis_base_url) -> Callable[[], str]:
    """Hands out flushed databases of the session's Redis other than redis_url's, one per call: for what
    lives longer than a test (a module's worker), so that redis_url's flushes never touch it."""
    import redis

    parts = urlsplit(redis_base_url)
    private = shutil.which("redis-server") is not None
    numbers = (n for n in itertools.count(1) if n != TEST_REDIS_DB and n < (DATABASES if private else 16))

    def next_database() -> str:
        try:
            number = next(numbers)
        except StopIteration:
            pytest.fail("the test Redis has no database left for another module")
        url = urlunsplit((parts.scheme, parts.netloc, f"/{number}", "", ""))
        redis.Redis.from_url(url).flushdb()
        return url

    return next_database


# --- S3 and storage -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server, spoken to over real HTTP by boto3."""
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    with serving([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, env=env):
        yield f"http://127.0.0.1:{port}"


def s3_variables(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point boto3 at moto."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch) -> str:
    """Standard AWS variables pointing boto3 at moto; returns a fresh s3:// storage URL."""
    for name, value in s3_variables(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    return f"s3://test-{uuid.uuid4().hex[:12]}/narrator"


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path) -> str:
    """Both storage backends: a local folder and moto's S3 server. Only where storage is what a test is
    about; elsewhere a module or test narrows it (parametrize "storage_url" indirect, or its own fixture)."""
    if request.param == "s3":
        return request.getfixturevalue("s3_env")
    return f"file://{tmp_path}/data"


# --- the service --------------------------------------------------------------------------------------


def make_service_env(redis_url: str, storage_url: str, tiny_models_dir: Path, workdir: Path) -> dict:
    """The environment a worker and the web app share: test Redis, storage, the tiny models."""
    return {
        "REDIS_URL": redis_url,
        "STORAGE_URL": storage_url,
        "CAPTION_MODEL": str(tiny_models_dir / "caption"),
        "STORY_MODEL": str(tiny_models_dir / "story"),
        "SPEECH_MODEL": str(tiny_models_dir / "speech"),
        "MODEL_CACHE_DIR": str(workdir / "cache"),
        "DEVICE": "cpu",
        "STORY_WORDS": "16",
        "JOB_TIME_LIMIT": "120",
        "SECRET_KEY": TEST_SECRET_KEY,
        # Generous: these tests submit and poll fast from one address (tests/web/test_rate_limits.py
        # checks the defaults).
        "SUBMIT_RATE_LIMIT": GENEROUS_RATE_LIMIT,
        "READ_RATE_LIMIT": GENEROUS_RATE_LIMIT,
    }


@pytest.fixture
def service_env(redis_url, storage_url, tiny_models_dir, tmp_path) -> dict:
    """The environment a worker and the web app share: test Redis, storage, the tiny models."""
    return make_service_env(redis_url, storage_url, tiny_models_dir, tmp_path)


@contextmanager
def celery_worker(env: dict, log: Path, app: str = "worker.app") -> Iterator[subprocess.Popen]:
    """A real `celery -A worker.app worker` process with `env` over ours (no eager mode), once it is
    ready; stopped (SIGTERM, then SIGKILL) afterwards."""
    env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            celery_worker_command(f"test-{uuid.uuid4().hex[:8]}@%h", app),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the Celery worker did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def require_process_mark(request) -> None:
    """A test that starts a process through request.getfixturevalue escapes the marking by fixture names:
    it must carry the mark itself, or `make test-fast` would run it."""
    if request.node.get_closest_marker("process") is None:
        pytest.fail(f"{request.node.nodeid} starts a worker process: mark it @pytest.mark.process", pytrace=False)


@pytest.fixture
def celery_worker_process(request, service_env, tmp_path) -> Iterator[subprocess.Popen]:
    """A real `celery -A worker.app worker` process on the test Redis (no eager mode)."""
    require_process_mark(request)
    with celery_worker(service_env, tmp_path / "worker.log") as proc:
        yield proc


@contextmanager
def http_server(service_env: dict) -> Iterator[tuple]:
    """The Flask app on a real threaded HTTP server; yields (app, base_url). Its PUBLIC_BASE_URL is
    the server's address, so the absolute URLs it gives (audio_url) can be fetched as they are."""
    from werkzeug.serving import make_server

    from shared.settings import Settings
    from web.app import create_app

    server = make_server("127.0.0.1", 0, None, threaded=True)  # the app comes once the port is known
    base = f"http://127.0.0.1:{server.server_port}"
    app = create_app(Settings(**{k.lower(): v for k, v in service_env.items()}, public_base_url=base))
    server.app = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, base
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def web_server(service_env) -> Iterator[tuple]:
    """The Flask app on a real threaded HTTP server; yields (app, base_url)."""
    with http_server(service_env) as served:
        yield served
