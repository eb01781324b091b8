"""The result cache end to end: the web app on a real HTTP server, a real Celery worker on the tiny
models, moto's S3 over HTTP, a real webhooks worker and receiver. A seeded job runs once; the same
photo, words and seed again succeed at once from its result with the worker stopped, and anything
else (another seed or length, no seed, RESULT_CACHE=false, the source's MP3 gone) is queued."""

from __future__ import annotations

import threading
import time

import pytest
import redis
import requests
from werkzeug.serving import make_server

from shared import result_cache
from shared.jobs.queue import QUEUE
from shared.settings import Settings
from tests.support.photos import photo
from tests.support.webhooks import SERVER_SECRET, verified


@pytest.fixture
def storage_url(s3_env) -> str:
    return s3_env  # S3 over HTTP (moto's server): the MP3 is copied with the backend's own calls


@pytest.fixture
def service_env(service_env) -> dict:
    """Webhooks to the loopback receiver, signed with the server's secret (ownerless jobs)."""
    return {**service_env, "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_SECRET": SERVER_SECRET}


def jpeg(color: str) -> bytes:
    return photo(color, (48, 36))


PHOTO = jpeg("olive")


def submit(base: str, photo: bytes = PHOTO, **fields) -> dict:
    response = requests.post(
        f"{base}/api/v1/jobs", files={"image": ("olive.jpg", photo, "image/jpeg")}, data=fields, timeout=30
    )
    assert response.status_code == 202, response.text
    return response.json()


def wait_finished(base: str, job_id: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while (job := requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def audio(base: str, job_id: str) -> bytes:
    response = requests.get(f"{base}/api/v1/jobs/{job_id}/audio", timeout=30)  # a presigned S3 URL, followed
    assert response.status_code == 200 and response.headers["Content-Type"] == "audio/mpeg"
    return response.content


@pytest.fixture
def uncached_server(service_env):
    """A second web server on the same Redis and bucket, with RESULT_CACHE=false."""
    from web.app import create_app

    server = make_server("127.0.0.1", 0, None, threaded=True)
    settings = Settings(**{k.lower(): v for k, v in service_env.items()}, result_cache=False)
    server.app = create_app(settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_same_photo_words_and_seed_succeed_at_once_from_the_cache(
    web_server, celery_worker_process, webhooks_worker, receiver, uncached_server, service_env
):
    app, base = web_server
    svc = app.extensions["narrator"]
    r = redis.Redis.from_url(service_env["REDIS_URL"])

    first = submit(base, words="12", seed="7")
    assert first["cached"] is False and first["status"] == "queued"
    first = wait_finished(base, first["id"])
    assert first["status"] == "succeeded" and first["cached"] is False and first["story"]
    source = svc.jobs.get(first["id"])
    key = result_cache.job_key(svc.settings, source)
    # The worker records the entry just after the job succeeds (best effort, after the success).
    deadline = time.monotonic() + 10
    while (entry := r.get(f"cache:{key}")) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entry is not None and source.audio_key in entry.decode()
    # The entry lives as long as the job that made it (JOB_TTL_HOURS).
    ttl = svc.settings.job_ttl_seconds
    assert ttl - 30 < r.ttl(f"cache:{key}") <= ttl and ttl - 30 < r.ttl(f"job:{first['id']}") <= ttl

    # No worker from here on: a cached job must not need one.
    celery_worker_process.terminate()
    celery_worker_process.wait(timeout=30)
    hook = receiver.url("/cached")
    started = time.monotonic()
    again = submit(base, words="12", seed="7", webhook=hook)
    assert time.monotonic() - started < 5
    assert again["status"] == "succeeded" and again["cached"] is True and again["id"] != first["id"]
    assert (again["caption"], again["story"], again["audio_seconds"]) == (
        first["caption"],
        first["story"],
        first["audio_seconds"],
    )
    assert again["finished_at"] and again["attempts"] == 0
    assert r.llen(QUEUE) == 0 and svc.jobs.queued_count() == 0  # it never went through the queue
    copy = svc.jobs.get(again["id"])
    assert copy.audio_key.startswith(f"audio/{again['id']}/")  # its own copy, living as long as its job
    assert audio(base, again["id"]) == audio(base, first["id"]) and len(audio(base, again["id"])) > 1000
    assert requests.get(f"{base}/jobs/{again['id']}", timeout=10).status_code == 200
    # Its webhook fires as for any finished job, signed and carrying `cached`.
    payload = verified(receiver.wait_for("/cached", 1)[0])
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == again["id"]
    assert payload["data"]["cached"] is True and payload["data"]["story"] == first["story"]

    # Anything else is a new story: queued, for a worker.
    for fields in ({"words": "12", "seed": "8"}, {"words": "13", "seed": "7"}, {"words": "12"}):
        job = submit(base, **fields)
        assert job["status"] == "queued" and job["cached"] is False, fields
    assert submit(base, jpeg("navy"), words="12", seed="7")["status"] == "queued"
    off = requests.post(
        f"{uncached_server}/api/v1/jobs",
        files={"image": ("olive.jpg", PHOTO, "image/jpeg")},
        data={"words": "12", "seed": "7"},
        timeout=30,
    ).json()
    assert off["status"] == "queued" and off["cached"] is False  # RESULT_CACHE=false
    assert svc.jobs.queued_count() == 5

    # Once the source's MP3 is gone, the entry answers nothing and is dropped.
    svc.storage.delete(source.audio_key)
    assert submit(base, words="12", seed="7")["status"] == "queued"
    assert r.get(f"cache:{key}") is None


def test_the_key_covers_photo_words_seed_style_and_models():
    settings = Settings(secret_key="x" * 32)
    base = result_cache.cache_key(settings, "a" * 64, 40, 7, None)
    assert base == result_cache.cache_key(Settings(secret_key="y" * 32), "a" * 64, 40, 7, None)
    others = [
        result_cache.cache_key(settings, "b" * 64, 40, 7, None),
        result_cache.cache_key(settings, "a" * 64, 41, 7, None),
        result_cache.cache_key(settings, "a" * 64, 40, 8, None),
        result_cache.cache_key(settings, "a" * 64, 40, 7, "noir"),
    ]
    for field, value in (
        ("caption_model", "other/blip"),
        ("story_model", "other/qwen"),
        ("story_adapter", "/adapters/v2"),
        ("speech_model", "other/vits"),
        ("quantize", "4bit"),
        ("story_temperature", 0.5),
    ):
        others.append(result_cache.cache_key(Settings(secret_key="x" * 32, **{field: value}), "a" * 64, 40, 7, None))
    assert len({base, *others}) == len(others) + 1
    # A style counts by its name and its adapter's location; the other styles do not matter.
    noir = Settings(secret_key="x" * 32, story_styles="noir=/adapters/noir,sunny=/adapters/sunny")
    key = result_cache.cache_key(noir, "a" * 64, 40, 7, "noir")
    assert key == result_cache.cache_key(
        Settings(secret_key="x" * 32, story_styles="noir=/adapters/noir"), "a" * 64, 40, 7, "noir"
    )
    assert key != result_cache.cache_key(
        Settings(secret_key="x" * 32, story_styles="noir=/adapters/noir-v2"), "a" * 64, 40, 7, "noir"
    )
    assert key != result_cache.cache_key(noir, "a" * 64, 40, 7, "sunny")
    assert not result_cache.applies(settings, None) and result_cache.applies(settings, 0)
    assert not result_cache.applies(Settings(secret_key="x" * 32, result_cache=False), 7)
