"""The JSON API with Flask's test client, a real Redis, and both storage backends (folder, moto S3)."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
from PIL import Image

from shared.jobs.queue import QUEUE, make_celery
from shared.settings import Settings
from shared.storage import open_storage
from tests.support.env import TEST_SECRET_KEY
from tests.support.net import closed_port
from tests.support.photos import photo
from tests.support.web import assert_error, build, job_records, make_settings, png, submit
from web.app import create_app

ROOT = Path(__file__).resolve().parents[2]


def mp3() -> bytes:
    from pydub import AudioSegment

    buf = io.BytesIO()
    AudioSegment.silent(duration=300, frame_rate=16000).export(buf, format="mp3")
    return buf.getvalue()


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path):
    if request.param == "s3":
        return request.getfixturevalue("s3_env")
    return f"file://{tmp_path}/data"


@pytest.fixture
def settings(redis_url, storage_url):
    return make_settings(
        redis_url=redis_url,
        storage_url=storage_url,
        max_upload_mb=1,
        max_image_pixels=1_000_000,
        job_ttl_hours=1,
        audio_url_ttl=120,
    )


@pytest.fixture
def app(settings):
    app = build(settings)
    yield app
    app.extensions["narrator"].celery.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def r(redis_url):
    return redis.Redis.from_url(redis_url)


def assert_nothing_created(app, r):
    svc = app.extensions["narrator"]
    assert svc.storage.list() == []
    assert r.llen(QUEUE) == 0
    assert job_records(r) == 0


def finish(app, job_id, audio=True):
    """Play the worker's part through the job store, as the real worker does."""
    svc = app.extensions["narrator"]
    assert svc.jobs.claim("test-worker", first=job_id)
    assert svc.jobs.progress(job_id, "story", caption="A teal square.")
    assert svc.jobs.progress(job_id, "speech", story="Once there was a teal square.")
    if audio:
        svc.storage.put(f"audio/{job_id}.mp3", mp3(), "audio/mpeg")
    assert svc.jobs.succeed(job_id, f"audio/{job_id}.mp3", 0.3, timings={"caption": 0.1, "story": 0.2})


# --- submitting ---------------------------------------------------------------------------------


def test_submit_stores_creates_and_enqueues(app, client, r):
    response = submit(client, words="50", seed="42")
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["words"] == 50 and job["seed"] == 42
    assert job["audio_url"] is None and job["created_at"].endswith("Z")
    for field in (
        "id",
        "status",
        "stage",
        "created_at",
        "started_at",
        "finished_at",
        "caption",
        "story",
        "audio_url",
        "audio_seconds",
        "error",
        "timings",
    ):
        assert field in job
    svc = app.extensions["narrator"]
    assert svc.storage.get(f"inputs/{job['id']}") == png()
    assert svc.jobs.get(job["id"]).content_type == "image/png"
    # The Celery message is in Redis and carries the job id only, never the image.
    assert r.llen(QUEUE) == 1
    raw = r.lindex(QUEUE, 0)
    message = json.loads(raw)
    assert message["headers"]["task"] == "narrate_job" and message["headers"]["id"] == job["id"]
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [job["id"]] and kwargs == {}
    assert len(raw) < 4096


def test_default_words_and_distinct_ids(client, settings):
    ids = {submit(client).get_json()["id"] for _ in range(3)}
    assert len(ids) == 3
    assert client.get(f"/api/v1/jobs/{ids.pop()}").get_json()["words"] == settings.story_words


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
@pytest.mark.parametrize(
    "send, status, code",
    [
        (lambda c: c.post("/api/v1/jobs"), 400, "missing_image"),
        (lambda c: c.post("/api/v1/jobs", data={"words": "40"}), 400, "missing_image"),
        (lambda c: c.post("/api/v1/jobs", data={"image": (io.BytesIO(b""), "")}), 400, "missing_image"),
        (lambda c: c.post("/api/v1/jobs", data={"image": (io.BytesIO(b""), "empty.png")}), 400, "empty_file"),
        (lambda c: c.post("/api/v1/jobs", json={"image": "aGVsbG8="}), 415, "unsupported_media_type"),
        (lambda c: c.post("/api/v1/jobs", data=png(), content_type="image/png"), 415, "unsupported_media_type"),
        (lambda c: submit(c, b"plain text, not a picture"), 415, "not_an_image"),
        (lambda c: submit(c, b"%PDF-1.4\n" + b"0" * 100), 415, "not_an_image"),
        (lambda c: submit(c, png()[:60]), 415, "truncated_image"),
        (lambda c: submit(c, words="many"), 400, "invalid_words"),
        (lambda c: submit(c, words="5"), 400, "invalid_words"),
        (lambda c: submit(c, words="201"), 400, "invalid_words"),
        (lambda c: submit(c, words="9" * 1_100_000), 413, "too_large"),  # over the form-field memory cap
        (lambda c: submit(c, words="9" * 5000), 400, "invalid_words"),
        (lambda c: submit(c, seed="abc"), 400, "invalid_seed"),
        (lambda c: submit(c, seed="1.5"), 400, "invalid_seed"),
        (lambda c: submit(c, seed="-1"), 400, "invalid_seed"),
        (lambda c: submit(c, seed=str(2**40)), 400, "invalid_seed"),
    ],
)
def test_submit_errors_store_nothing(app, client, r, send, status, code):
    assert_error(send(client), status, code)
    assert_nothing_created(app, r)


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
def test_unsupported_image_format(app, client, r):
    assert_error(submit(client, photo(None, (16, 16), "ICO")), 415, "unsupported_format")
    assert_nothing_created(app, r)


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
def test_too_many_pixels(app, client, r):
    # 1200 x 1000 is 1.2 MP against a 1 MP limit, yet a small file: a decompression bomb in miniature.
    data = png((1200, 1000))
    assert len(data) < 100_000
    assert_error(submit(client, data), 413, "too_many_pixels")
    assert_nothing_created(app, r)


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
def test_upload_over_the_limit_is_refused_before_reading(app, client, r):
    class Unreadable(io.RawIOBase):
        def read(self, *_):
            raise AssertionError("the body was read")

    response = client.post(
        "/api/v1/jobs",
        content_type="multipart/form-data; boundary=x",
        environ_overrides={"CONTENT_LENGTH": str(50 * 1024 * 1024), "wsgi.input": Unreadable()},
    )
    assert_error(response, 413, "too_large")
    assert_nothing_created(app, r)


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
def test_file_over_the_limit_is_refused_while_reading(app, client, r, settings):
    # Just over MAX_UPLOAD_MB: the whole request is within the form allowance, the file is not.
    data = png() + b"\0" * (settings.max_upload_bytes + 10 - len(png()))
    assert_error(submit(client, data), 413, "too_large")
    big = png() + b"\0" * (2 * settings.max_upload_bytes)
    assert_error(submit(client, big), 413, "too_large")
    assert_nothing_created(app, r)


def test_enqueue_failure_is_503_and_leaves_nothing(app, client, r, settings):
    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    app.extensions["narrator"].celery = make_celery(broken)
    assert_error(submit(client), 503, "queue_unavailable")
    assert_nothing_created(app, r)


# --- reading, audio, cancel, listing --------------------------------------------------------------


def test_get_job_and_unknown_ids(client):
    job = submit(client).get_json()
    got = client.get(f"/api/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.get_json() == job
    for bad in ("doesnotexist", "x" * 5000, "bad%20id", "..%2F..%2Fetc", "%00", "日本"):
        assert_error(client.get(f"/api/v1/jobs/{bad}"), 404, "not_found")
        assert_error(client.get(f"/api/v1/jobs/{bad}/audio"), 404, "not_found")
        assert_error(client.post(f"/api/v1/jobs/{bad}/cancel"), 404, "not_found")


def test_image_endpoint(client):
    job = submit(client).get_json()
    response = client.get(f"/api/v1/jobs/{job['id']}/image")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == png()
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_progress_and_audio(app, client, storage_url):
    job_id = submit(client).get_json()["id"]
    assert_error(client.get(f"/api/v1/jobs/{job_id}/audio"), 409, "not_ready")
    finish(app, job_id)
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["stage"] is None
    assert job["caption"] == "A teal square." and job["story"] == "Once there was a teal square."
    assert job["audio_seconds"] == 0.3 and job["timings"] == {"caption": 0.1, "story": 0.2}
    # Relative: neither PUBLIC_BASE_URL nor a trusted proxy says where the app lives.
    assert job["audio_url"] == f"/api/v1/jobs/{job_id}/audio"
    response = client.get(f"/api/v1/jobs/{job_id}/audio")
    if storage_url.startswith("s3://"):
        assert response.status_code == 302
        presigned = response.headers["Location"]
        with urllib.request.urlopen(presigned, timeout=10) as fetched:  # plain GET, no credentials
            assert fetched.read() == mp3()
    else:
        assert response.status_code == 200 and response.mimetype == "audio/mpeg"
        assert response.data == mp3()
        assert f"story-{job_id}.mp3" in response.headers["Content-Disposition"]
        download = client.get(f"/api/v1/jobs/{job_id}/audio?download=1")
        assert download.headers["Content-Disposition"].startswith("attachment")


def test_audio_missing_from_storage(app, client, storage_url):
    if storage_url.startswith("s3://"):
        pytest.skip("S3 presigns without a lookup; a missing object is S3's 404")
    job_id = submit(client).get_json()["id"]
    finish(app, job_id, audio=False)
    assert_error(client.get(f"/api/v1/jobs/{job_id}/audio"), 404, "audio_missing")


def test_cancel(app, client):
    job_id = submit(client).get_json()["id"]
    response = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    assert response.get_json()["finished_at"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200  # idempotent
    assert not app.extensions["narrator"].jobs.claim("test-worker", first=job_id)  # the worker will skip it
    done = submit(client).get_json()["id"]
    finish(app, done)
    assert_error(client.post(f"/api/v1/jobs/{done}/cancel"), 409, "already_finished")
    assert client.get(f"/api/v1/jobs/{done}").get_json()["status"] == "succeeded"


def test_cancel_running_job(app, client):
    job_id = submit(client).get_json()["id"]
    app.extensions["narrator"].jobs.claim("test-worker", first=job_id)
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").get_json()["status"] == "canceled"
    assert not app.extensions["narrator"].jobs.succeed(job_id, "audio/x.mp3", 1.0)


def make_key(app, name: str) -> str:
    """`flask keys create NAME`, run in-process by Flask's CLI runner; the key is the last line."""
    result = app.test_cli_runner().invoke(args=["keys", "create", name])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def test_list_jobs_with_cursor(app, client):
    auth = {"Authorization": f"Bearer {make_key(app, 'lister')}"}
    submit(client)  # ownerless: never listed
    ids = [
        client.post("/api/v1/jobs", data={"image": (io.BytesIO(png()), "p.png")}, headers=auth).get_json()["id"]
        for _ in range(5)
    ]
    first = client.get("/api/v1/jobs?limit=2", headers=auth).get_json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2] and first["next_cursor"]
    second = client.get(f"/api/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=auth).get_json()
    third = client.get(f"/api/v1/jobs?limit=2&cursor={second['next_cursor']}", headers=auth).get_json()
    assert [j["id"] for j in second["jobs"] + third["jobs"]] == ids[::-1][2:]
    assert third["next_cursor"] is None
    everything = client.get("/api/v1/jobs", headers=auth).get_json()
    assert len(everything["jobs"]) == 5 and everything["next_cursor"] is None
    assert_error(client.get("/api/v1/jobs"), 401, "api_key_required")  # no key, no session


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
@pytest.mark.parametrize(
    "query, code",
    [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("cursor=garbage", "invalid_cursor"),
        ("cursor=" + "A" * 500, "invalid_cursor"),
        # well-formed cursors whose score Redis would refuse (nan:x, inf:x, -inf:x)
        ("cursor=bmFuOng", "invalid_cursor"),
        ("cursor=aW5mOng", "invalid_cursor"),
        ("cursor=LWluZjp4", "invalid_cursor"),
    ],
)
def test_list_errors(app, client, query, code):
    auth = {"Authorization": f"Bearer {make_key(app, 'lister')}"}
    assert_error(client.get(f"/api/v1/jobs?{query}", headers=auth), 400, code)


# --- garbage never causes a 500 -----------------------------------------------------------------


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
@pytest.mark.parametrize(
    "method, path",
    [
        ("DELETE", "/api/v1/jobs"),
        ("PUT", "/api/v1/jobs"),
        ("PATCH", "/api/v1/jobs/abc"),
        ("DELETE", "/api/v1/jobs/abc"),
        ("GET", "/api/v1/jobs/abc/cancel"),
        ("POST", "/api/v1/jobs/abc/audio"),
        ("POST", "/healthz"),
        ("POST", "/readyz"),
        ("GET", "/api/v1/nothing"),
        ("GET", "/api/v2/jobs"),
    ],
)
def test_wrong_methods_and_paths(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code in (404, 405)
    assert_error(response, response.status_code, "method_not_allowed" if response.status_code == 405 else "not_found")
    if response.status_code == 405:
        assert response.headers["Allow"]


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # validation precedes storage
@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"\xff\xfe garbage", "multipart/form-data; boundary=zzz"),
        (
            b'--zzz\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nabc',
            "multipart/form-data; boundary=zzz",
        ),
        (b"--zzz--", "multipart/form-data"),
        (b"{not json", "application/json"),
        (b"image=abc&words=%ff%fe", "application/x-www-form-urlencoded"),
        (b"\x00" * 1000, "application/octet-stream"),
        (b"x", "text/plain; charset=nonsense"),
    ],
)
def test_garbage_bodies_are_4xx(app, client, r, body, content_type):
    response = client.post("/api/v1/jobs", data=body, content_type=content_type)
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert_error(response, response.status_code, response.get_json()["error"]["code"])
    assert_nothing_created(app, r)


# --- health and readiness -----------------------------------------------------------------------


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"redis": "ok", "storage": "ok"}


def test_redis_down(storage_url, tmp_path):
    dead = make_settings(redis_url=f"redis://127.0.0.1:{closed_port()}/0", storage_url=storage_url, max_upload_mb=1)
    client = build(dead).test_client()
    assert client.get("/healthz").status_code == 200  # the process is alive, just not ready
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["checks"]["storage"] == "ok" and body["checks"]["redis"] != "ok"
    assert "redis" in body["error"]["message"]
    assert_error(client.get("/api/v1/jobs/abcdefghijklmnop"), 503, "redis_unavailable")
    assert_error(client.get("/api/v1/jobs"), 503, "redis_unavailable")
    assert_error(submit(client), 503, "redis_unavailable")


def test_storage_down(redis_url, s3_env, monkeypatch, r):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
    app = build(make_settings(redis_url=redis_url, storage_url=s3_env, max_upload_mb=1))
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["checks"]["redis"] == "ok" and "storage" in body["error"]["message"]
    assert_error(submit(client), 503, "storage_unavailable")
    assert r.llen(QUEUE) == 0 and job_records(r) == 0


def test_storage_unwritable_folder_is_not_ready(redis_url, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    client = build(make_settings(redis_url=redis_url, storage_url=f"file://{blocker}/data")).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["checks"]["storage"] != "ok"


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)
def test_storage_disk_full_is_503_not_500(app, client, r, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # LocalStorage.put's final rename
    assert_error(submit(client), 503, "storage_unavailable")
    assert r.llen(QUEUE) == 0 and job_records(r) == 0


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)
def test_any_storage_error_is_503_not_500(app, client, r, monkeypatch):
    from shared.storage import StorageError

    def fail(*args, **kwargs):
        raise StorageError("cannot write: something odd")

    monkeypatch.setattr(app.extensions["narrator"].storage, "put", fail)
    assert_error(submit(client), 503, "storage_unavailable")
    assert r.llen(QUEUE) == 0 and job_records(r) == 0


def test_bucket_is_created_at_start(redis_url, s3_env):
    build(make_settings(redis_url=redis_url, storage_url=s3_env))
    open_storage(s3_env).check()


@pytest.mark.process
def test_web_process_never_imports_torch(tmp_path, redis_url):
    code = (
        "import sys, web.app; web.app.create_app(); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'worker', 'transformers'))]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, STORAGE_URL=f"file://{tmp_path}/data", REDIS_URL=redis_url, SECRET_KEY=TEST_SECRET_KEY)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_behind_a_proxy_urls_use_the_clients_scheme_and_host(settings):
    # The host the proxy names must be one this app answers to (TRUSTED_HOSTS).
    app = build(settings.model_copy(update={"proxy_hops": 1, "trusted_hosts": "stories.example.com"}))
    client = app.test_client()
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "stories.example.com"}
    response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(png()), "p.png")}, headers=headers)
    assert response.status_code == 202
    job_id = response.get_json()["id"]
    finish(app, job_id)
    job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
    assert job["audio_url"] == f"https://stories.example.com/api/v1/jobs/{job_id}/audio"
    # Without PROXY_HOPS the same headers are not trusted.
    plain = build(settings).test_client().get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
    assert plain["audio_url"] == f"/api/v1/jobs/{job_id}/audio"
    # PUBLIC_BASE_URL wins over what the proxy says.
    public = build(
        settings.model_copy(
            update={"proxy_hops": 1, "public_base_url": "https://narrator.example.com/", "trusted_hosts": "*"}
        )
    )
    job = public.test_client().get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
    assert job["audio_url"] == f"https://narrator.example.com/api/v1/jobs/{job_id}/audio"
    app.extensions["narrator"].celery.close()


@pytest.mark.parametrize("megabytes", [0.4, 3])
def test_real_sized_photos_are_accepted(client, settings, megabytes):
    # Noise does not compress: a JPEG of real-photo size, well above the parser's chunk size.
    import numpy as np

    side = int(700 * megabytes**0.5)
    pixels = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    assert megabytes * 0.5e6 < len(buf.getvalue()) < 8e6
    big = settings.model_copy(update={"max_upload_mb": 10, "max_image_pixels": 40_000_000})
    app = build(big)
    response = app.test_client().post("/api/v1/jobs", data={"image": (io.BytesIO(buf.getvalue()), "photo.jpg")})
    assert response.status_code == 202, response.get_data(as_text=True)
    app.extensions["narrator"].celery.close()


def test_secret_key_is_required(redis_url, tmp_path, monkeypatch):
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    settings = Settings(redis_url=redis_url, storage_url=f"file://{tmp_path}/data")
    with pytest.raises(RuntimeError, match="SECRET_KEY is not set") as refused:
        create_app(settings)
    assert "make up" in str(refused.value)
    monkeypatch.setenv("FLASK_DEBUG", "1")  # `flask run --debug`: a temporary key, for development only
    assert create_app(settings).secret_key


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)
def test_a_malformed_rate_limit_is_refused_at_start(settings):
    with pytest.raises(RuntimeError, match="SUBMIT_RATE_LIMIT"):
        create_app(settings.model_copy(update={"submit_rate_limit": "lots"}))
