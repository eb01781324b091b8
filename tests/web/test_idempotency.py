"""Idempotency-Key on POST /api/v1/jobs, over real HTTP against the app on a real threaded server,
a real Redis and local storage (the web app never loads a model, so no tiny models are built)."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.jobs import JobStore
from shared.jobs.queue import QUEUE, make_celery
from shared.storage import StorageUnavailable
from tests.support.net import closed_port
from tests.support.photos import photo as make_photo
from tests.support.web import job_records
from web.jobs import idempotency
from web.jobs.idempotency import PENDING_TTL, fingerprint, redis_key

LOCAL = pytest.mark.parametrize("storage_url", ["local"], indirect=True)
DEFAULT_WORDS = 16  # STORY_WORDS in conftest's service_env


@pytest.fixture(scope="module")
def tiny_models_dir(tmp_path_factory) -> Path:
    """Overrides conftest's: the web app only passes model paths along, it never loads them."""
    return tmp_path_factory.mktemp("no-models")


@pytest.fixture
def server(web_server):
    app, base = web_server
    yield app, base
    app.extensions["narrator"].celery.close()


@pytest.fixture
def r(redis_url):
    return redis.Redis.from_url(redis_url)


class Reply(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: dict


def photo(color="teal") -> bytes:
    return make_photo(color, (32, 24), "PNG")


def post(base: str, key=None, image: bytes | None = None, filename="p.png", token=None, **fields) -> Reply:
    """A multipart submission; `key` is sent as given (str as latin-1, bytes raw), None sends none;
    `token`: an API key to send."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + (photo() if image is None else image)
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/jobs")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(body)))
        if key is not None:
            conn.putheader("Idempotency-Key", key)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders(body)
        response = conn.getresponse()
        return Reply(response.status, response.headers, json.loads(response.read()))
    finally:
        conn.close()


def get(base: str, path: str) -> dict:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    assert set(reply.body) == {"error"} and reply.body["error"]["code"] == code, reply
    assert reply.body["error"]["message"]


def counts(app, r) -> tuple[int, int, int]:
    """(job records, queue messages, stored inputs)."""
    return job_records(r), r.llen(QUEUE), len(app.extensions["narrator"].storage.list("inputs/"))


# --- replays ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_url", ["local", "s3"], indirect=True)
def test_replay_returns_the_same_job_in_its_current_state(server, r):
    app, base = server
    first = post(base, "order-42", words="30", seed="7")
    assert first.status == 202 and first.headers.get("Idempotent-Replayed") is None
    job_id = first.body["id"]
    assert first.headers["Location"] == f"/api/v1/jobs/{job_id}"

    again = post(base, "order-42", words="30", seed="7")
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.body == first.body == get(base, f"/api/v1/jobs/{job_id}")

    # The replay shows the job as it is now, in the submit response's shape.
    app.extensions["narrator"].jobs.cancel(job_id)
    later = post(base, "order-42", words="30", seed="7", filename="renamed.png")  # the name is not compared
    assert later.status == 200 and later.body["id"] == job_id and later.body["status"] == "canceled"
    assert list(later.body) == list(first.body) and later.body["filename"] == "p.png"
    assert counts(app, r) == (1, 1, 1)


@LOCAL
def test_default_words_count_as_given(server, r):
    app, base = server
    job_id = post(base, "defaults").body["id"]
    assert post(base, "defaults", words=str(DEFAULT_WORDS)).body["id"] == job_id
    assert counts(app, r) == (1, 1, 1)


@LOCAL
def test_same_key_with_another_request_is_422(server, r):
    app, base = server
    original = {"words": "30", "seed": "7"}
    job_id = post(base, "k-1", **original).body["id"]
    for change in ({"image": photo("orange")}, {"words": "31"}, {"seed": "8"}, {"seed": ""}, {"words": ""}):
        assert_error(post(base, "k-1", **{**original, **change}), 422, "idempotency_key_reused")
    assert counts(app, r) == (1, 1, 1)
    assert post(base, "k-1", **original).body["id"] == job_id  # the key still names its job


@LOCAL
def test_different_keys_make_different_jobs(server, r):
    app, base = server
    ids = {post(base, key).body["id"] for key in ("a", "b", "A", " a\t")}  # surrounding blanks: not the key's
    assert len(ids) == 3
    assert post(base).body["id"] not in ids and post(base).status == 202  # no key: always a new job
    assert counts(app, r)[0] == 5


# --- the key itself --------------------------------------------------------------------------------


@LOCAL
def test_invalid_keys_are_400_and_create_nothing(server, r):
    app, base = server
    for key in (
        "",
        "  ",
        "x" * 256,
        "a\x01b",
        "tab\there",
        "del\x7f",
        "nul\x00",
        "clé".encode(),
        "鍵".encode(),
        b"\xff\xfe",
    ):
        assert_error(post(base, key), 400, "invalid_idempotency_key")
    assert counts(app, r) == (0, 0, 0)
    assert not r.keys("idempotency:*")


@LOCAL
def test_keys_of_any_printable_ascii_up_to_255_characters(server, r):
    _, base = server
    for key in ("x" * 255, "1", '"8e03978e-40d5-43e8-bc93-6894a57f9324"', "a b ~!@#$%^&*()[]{}<>?/\\|'`"):
        assert post(base, key).status == 202, key
        assert r.exists(redis_key(key)), key


@LOCAL
def test_the_reservation_lives_24_hours_and_hides_the_key(server, r, monkeypatch):
    app, base = server
    post(base, "ttl-key")
    assert not [k for k in r.keys("*") if b"ttl-key" in k]
    key = "idempotency:" + hashlib.sha256(b"\nttl-key").hexdigest()  # an ownerless call: the empty owner
    assert redis_key("ttl-key") == key
    assert 24 * 3600 - 10 < r.ttl(key) <= 24 * 3600
    stored = json.loads(r.get(key))
    assert stored["state"] == "done" and stored["fingerprint"] == fingerprint(photo(), DEFAULT_WORDS, None)
    # Never longer than the job record itself lives.
    monkeypatch.setattr(app.extensions["narrator"].jobs, "ttl", 3600)
    post(base, "short-lived")
    assert 3590 < r.ttl(redis_key("short-lived")) <= 3600


# --- concurrency -----------------------------------------------------------------------------------


@LOCAL
def test_concurrent_requests_with_one_key_make_one_job(server, r):
    app, base = server
    gate = threading.Barrier(10)

    def submit(_):
        gate.wait()
        return post(base, "burst", words="20")

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(submit, range(10)))
    assert sorted(reply.status for reply in replies) == [200] * 9 + [202]
    assert len({reply.body["id"] for reply in replies}) == 1
    assert all(reply.headers.get("Idempotent-Replayed") == "true" for reply in replies if reply.status == 200)
    assert counts(app, r) == (1, 1, 1)


# --- failures do not burn the key ------------------------------------------------------------------


def dead_redis() -> redis.Redis:
    """A Redis that is down, refused at once (no retries, to keep the tests quick)."""
    return redis.Redis(port=closed_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def break_storage(app, monkeypatch):
    """Local storage made really unusable: a file where its folder should be."""
    root = app.extensions["narrator"].storage.root
    moved = root.with_name(root.name + ".away")
    root.rename(moved)
    root.write_text("not a folder")

    def restore():
        root.unlink()
        moved.rename(root)

    return restore


def break_queue(app, monkeypatch):
    svc = app.extensions["narrator"]
    monkeypatch.setattr(
        svc,
        "celery",
        make_celery(svc.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})),
    )
    return monkeypatch.undo


def break_redis_before(app, monkeypatch):  # Redis down when the key is reserved
    monkeypatch.setattr(app.extensions["narrator"], "redis", dead_redis())
    return monkeypatch.undo


def break_redis_after(app, monkeypatch):  # Redis fails when the job record is written
    svc = app.extensions["narrator"]
    monkeypatch.setattr(svc, "jobs", JobStore(dead_redis(), 3600))
    return monkeypatch.undo


@LOCAL
@pytest.mark.parametrize(
    "breaker, code",
    [
        (break_storage, "storage_unavailable"),
        (break_queue, "queue_unavailable"),
        (break_redis_before, "redis_unavailable"),
        (break_redis_after, "redis_unavailable"),
    ],
)
def test_a_request_that_fails_with_503_does_not_burn_the_key(server, r, monkeypatch, breaker, code):
    app, base = server
    restore = breaker(app, monkeypatch)
    assert_error(post(base, "retry-me", seed="3"), 503, code)
    restore()
    assert counts(app, r) == (0, 0, 0) and not r.exists(redis_key("retry-me"))
    created = post(base, "retry-me", seed="3")
    assert created.status == 202 and created.headers.get("Idempotent-Replayed") is None
    replay = post(base, "retry-me", seed="3")
    assert replay.status == 200 and replay.body["id"] == created.body["id"]
    assert counts(app, r) == (1, 1, 1)


@LOCAL
def test_validation_errors_do_not_reserve_the_key(server, r):
    app, base = server
    assert_error(post(base, "v", words="5"), 400, "invalid_words")
    assert_error(post(base, "v", image=b"not a picture"), 415, "not_an_image")
    assert not r.exists(redis_key("v"))
    assert post(base, "v", words="12").status == 202  # other parameters than the failed tries: fine


@LOCAL
def test_a_duplicate_waiting_on_a_failing_request_makes_the_job(server, r, monkeypatch):
    app, base = server
    storage = app.extensions["narrator"].storage
    real_put, calls = storage.put, []

    def slow_then_down(*args, **kwargs):  # the first upload hangs a moment, then storage fails
        calls.append(args[0])
        if len(calls) == 1:
            time.sleep(0.6)
            raise StorageUnavailable("simulated outage")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(storage, "put", slow_then_down)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, base, "handover")
        deadline = time.monotonic() + 5
        while not r.exists(redis_key("handover")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(r.get(redis_key("handover")))["state"] == "pending"
        assert 0 < r.ttl(redis_key("handover")) <= PENDING_TTL  # a crashed request frees it by itself
        second = pool.submit(post, base, "handover")
        first, second = first.result(), second.result()
    assert_error(first, 503, "storage_unavailable")
    assert second.status == 202 and second.headers.get("Idempotent-Replayed") is None
    assert len(calls) == 2 and counts(app, r) == (1, 1, 1)


@LOCAL
def test_a_reservation_left_pending_answers_409_until_it_expires(server, r, monkeypatch):
    app, base = server
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.3)
    pending = {"fingerprint": fingerprint(photo(), DEFAULT_WORDS, None), "job_id": "crashed", "state": "pending"}
    r.set(redis_key("stuck"), json.dumps(pending), ex=PENDING_TTL)  # as a request killed mid-way leaves it
    started = time.monotonic()
    reply = post(base, "stuck")
    assert_error(reply, 409, "idempotency_key_in_use")
    assert reply.headers["Retry-After"] == "1" and time.monotonic() - started < 3
    assert_error(post(base, "stuck", seed="1"), 422, "idempotency_key_reused")  # checked without waiting
    r.delete(redis_key("stuck"))  # what its expiry does
    assert post(base, "stuck").status == 202
    assert counts(app, r) == (1, 1, 1)


@LOCAL
def test_a_key_whose_job_is_gone_makes_a_new_one(server, r):
    app, base = server
    old = post(base, "gone").body["id"]
    app.extensions["narrator"].jobs.delete(old)  # as if its record had expired
    reply = post(base, "gone")
    assert reply.status == 202 and reply.body["id"] != old
    assert post(base, "gone").body["id"] == reply.body["id"]


def test_the_style_is_part_of_the_request():
    """The same key with another style is another request (a 422), not the first style's job."""
    from web.jobs.idempotency import fingerprint

    plain = fingerprint(b"photo", 30, 7)
    assert fingerprint(b"photo", 30, 7, style=None) == plain  # keys made before styles still match
    assert (
        len({plain, fingerprint(b"photo", 30, 7, style="bedtime"), fingerprint(b"photo", 30, 7, style="adventure")})
        == 3
    )


@LOCAL
def test_keys_belong_to_their_owner(server, r):
    from web.middleware.auth import create_key

    app, base = server
    alice, bob = create_key(r, "alice"), create_key(r, "bob")
    first = post(base, "shared-key", token=alice)
    other = post(base, "shared-key", token=bob, image=photo("navy"))  # another photo: no conflict across owners
    assert first.status == 202 and other.status == 202 and first.body["id"] != other.body["id"]
    assert post(base, "shared-key", token=alice).body["id"] == first.body["id"]  # each owner's replay is its own
    replay = post(base, "shared-key", token=bob, image=photo("navy"))
    assert replay.status == 200 and replay.body["id"] == other.body["id"]
    reused = post(base, "shared-key", token=alice, words="40")
    assert_error(reused, 422, "idempotency_key_reused")
    assert reused.body["error"]["message"] == idempotency.REUSED_MESSAGE  # says nothing about the other request


@LOCAL
def test_a_living_request_keeps_its_reservation_past_pending_ttl(server, r, monkeypatch):
    app, base = server
    monkeypatch.setattr(idempotency, "PENDING_TTL", 1)
    monkeypatch.setattr(idempotency, "RENEW_EVERY", 0.2)
    storage = app.extensions["narrator"].storage
    real_put = storage.put

    def slow_put(*args, **kwargs):  # storage slower than the reservation lives without renewals
        time.sleep(2.5)
        return real_put(*args, **kwargs)

    monkeypatch.setattr(storage, "put", slow_put)
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(post, base, "slow")
        time.sleep(1.8)
        held = r.get(redis_key("slow"))
        assert held is not None and json.loads(held)["state"] == "pending"
        assert 0 < r.pttl(redis_key("slow")) <= 1000
        assert reply.result().status == 202
    assert json.loads(r.get(redis_key("slow")))["state"] == "done"


def test_a_dead_request_s_reservation_frees_within_ten_seconds():
    assert idempotency.PENDING_TTL <= 10 and idempotency.RENEW_EVERY < idempotency.PENDING_TTL / 2
