"""Long polls: `GET /api/v1/jobs/<id>?wait=S` and `Prefer: wait=S` on submit (web/jobs/events.py).

The job store publishes every change, so these tests play the worker's part with its methods
(claim, progress, cancel) and time how soon the waiting requests answer. The acceptance scenario at
the end runs the real service: web server, Celery worker, tiny models.
"""

from __future__ import annotations

import io
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

import pytest
import redis
import requests

from narrator_client import Client
from shared.jobs import JobStore
from tests.support.env import requires_tool
from tests.support.net import free_port, serving
from tests.support.web import assert_error, build, make_settings, png, submit
from web.jobs.events import MAX_WAIT, preferred_wait

PROMPT = 2.0  # seconds: "promptly" (on a loaded 2-core machine), where the waits are 10 s


@pytest.fixture
def app(redis_url, tmp_path):
    app = build(make_settings(redis_url=redis_url, storage_url=f"file://{tmp_path}/data", job_ttl_hours=1))
    yield app
    events = app.extensions.get("narrator_job_events")
    if events is not None:
        events.close()
    app.extensions["narrator"].celery.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app) -> JobStore:
    return app.extensions["narrator"].jobs


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def new_job(client) -> str:
    response = submit(client)
    assert response.status_code == 202
    return response.get_json()["id"]


def waiters(app) -> int:
    events = app.extensions.get("narrator_job_events")
    return events.waiting() if events is not None else 0


def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.01)


def timed(call):
    """(response, seconds it took)."""
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def long_poll(pool, app, job_id: str, wait: float, waiting: int = 1) -> Future:
    """A GET ?wait= in the background, returned once it waits (it has read the job it compares with)."""
    future = pool.submit(timed, lambda: app.test_client().get(f"/api/v1/jobs/{job_id}?wait={wait:g}"))
    until(lambda: waiters(app) >= waiting)
    return future


# --- GET ?wait= ------------------------------------------------------------------------------------


def test_a_wait_ends_when_the_status_or_stage_changes(app, client, store, pool):
    job_id = new_job(client)
    steps = [
        (lambda: store.claim("test-worker", first=job_id), ("running", "caption")),
        (lambda: store.progress(job_id, "story", caption="A teal square."), ("running", "story")),
        (lambda: store.cancel(job_id), ("canceled", None)),
    ]
    for change, (status, stage) in steps:
        waiting = long_poll(pool, app, job_id, 10)
        assert change()
        response, seconds = waiting.result(timeout=5)
        job = response.get_json()
        assert response.status_code == 200 and (job["status"], job["stage"]) == (status, stage)
        assert seconds < PROMPT, seconds
        assert job == client.get(f"/api/v1/jobs/{job_id}").get_json()  # the plain GET's view
        until(lambda: waiters(app) == 0)


def test_a_change_between_two_polls_is_answered_at_once_to_the_etag_that_missed_it(client, store):
    job_id = new_job(client)
    seen = client.get(f"/api/v1/jobs/{job_id}")
    assert seen.status_code == 200 and seen.headers["ETag"]
    assert store.claim("test-worker", first=job_id)  # the change comes before the next poll
    response, seconds = timed(
        lambda: client.get(f"/api/v1/jobs/{job_id}?wait=10", headers={"If-None-Match": seen.headers["ETag"]})
    )
    assert response.status_code == 200 and response.get_json()["status"] == "running"
    assert seconds < PROMPT, seconds  # without the ETag it would wait for a change after this one
    assert response.headers["ETag"] != seen.headers["ETag"]


def test_an_unchanged_job_is_304_to_its_etag_after_the_wait_and_at_once_without_one(client):
    job_id = new_job(client)
    tag = client.get(f"/api/v1/jobs/{job_id}").headers["ETag"]
    response, seconds = timed(lambda: client.get(f"/api/v1/jobs/{job_id}?wait=0.6", headers={"If-None-Match": tag}))
    assert response.status_code == 304 and response.get_data() == b"" and response.headers["ETag"] == tag
    assert 0.6 <= seconds < 0.6 + PROMPT, seconds
    plain = client.get(f"/api/v1/jobs/{job_id}", headers={"If-None-Match": tag})
    assert plain.status_code == 304
    assert client.get(f"/api/v1/jobs/{job_id}", headers={"If-None-Match": '"other"'}).status_code == 200


def test_a_final_job_answers_at_once(client, store):
    job_id = new_job(client)
    assert store.cancel(job_id)
    response, seconds = timed(lambda: client.get(f"/api/v1/jobs/{job_id}?wait=30"))
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    assert seconds < PROMPT, seconds


def test_a_wait_without_a_change_lasts_its_seconds(app, client, store, pool):
    job_id = new_job(client)
    response, seconds = timed(lambda: client.get(f"/api/v1/jobs/{job_id}?wait=0.6"))
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    assert 0.6 <= seconds < 0.6 + PROMPT, seconds
    # A change that leaves the status and stage alone (a caption) does not end it either, but the
    # answer shows it.
    assert store.claim("test-worker", first=job_id)
    waiting = long_poll(pool, app, job_id, 0.6)
    assert store.update(job_id, caption="Written meanwhile.")
    response, seconds = waiting.result(timeout=5)
    assert response.get_json()["caption"] == "Written meanwhile." and seconds >= 0.6


@pytest.mark.parametrize("wait", ["0", "-1", "60.001", "61", "abc", "", " ", "nan", "inf", "1e1", "0x10", "1,5"])
def test_invalid_wait(client, wait):
    job_id = new_job(client)
    response = client.get(f"/api/v1/jobs/{job_id}", query_string={"wait": wait})
    assert_error(response, 400, "invalid_wait")
    assert "more than 0 and at most 60" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("wait", ["60", "0.5", ".5", "7.", " 3 "])
def test_valid_waits(client, store, wait):
    job_id = new_job(client)
    assert store.cancel(job_id)  # final: every wait answers at once
    assert client.get(f"/api/v1/jobs/{job_id}", query_string={"wait": wait}).status_code == 200


def test_unknown_and_malformed_ids_never_wait(app, client):
    for path in ("/api/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA?wait=30", "/api/v1/jobs/not%20an%20id?wait=30"):
        response, seconds = timed(lambda: client.get(path))  # noqa: B023 (called at once)
        assert_error(response, 404, "not_found")
        assert seconds < PROMPT
    assert waiters(app) == 0


# --- Prefer: wait on submit ------------------------------------------------------------------------


def submit_preferring(app, prefer: str, **headers):
    form = {"image": (io.BytesIO(png()), "photo.png")}
    return app.test_client().post("/api/v1/jobs", data=form, headers={"Prefer": prefer, **headers})


def test_prefer_wait_answers_when_the_job_is_final(app, store, pool):
    waiting = pool.submit(timed, lambda: submit_preferring(app, "respond-async, wait=10; foo=bar"))
    until(lambda: waiters(app) == 1)
    (job_id,) = app.extensions["narrator"].jobs.queued_ids(1)
    assert store.claim("test-worker", first=job_id)  # not final: the answer still waits
    time.sleep(0.2)
    assert not waiting.done()
    assert store.cancel(job_id)
    response, seconds = waiting.result(timeout=5)
    assert response.status_code == 202 and response.get_json()["status"] == "canceled"
    assert response.headers["Preference-Applied"] == "wait=10"
    assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert seconds < 0.2 + PROMPT + 0.5


def test_prefer_wait_ends_after_its_seconds_and_applies_to_replays(app):
    response, seconds = timed(lambda: submit_preferring(app, "wait=0.5", **{"Idempotency-Key": "k-1"}))
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=0.5" and 0.5 <= seconds < 0.5 + PROMPT
    replay, seconds = timed(lambda: submit_preferring(app, 'wait="0.3"', **{"Idempotency-Key": "k-1"}))
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Preference-Applied"] == "wait=0.3" and 0.3 <= seconds < 0.3 + PROMPT
    assert replay.get_json()["id"] == response.get_json()["id"]


@pytest.mark.parametrize("prefer", ["wait=abc", "wait=0", "wait=", "respond-async", "handling=lenient", "wait=-5"])
def test_an_unusable_prefer_is_not_applied(app, prefer):
    response = submit_preferring(app, prefer)
    assert response.status_code == 202 and "Preference-Applied" not in response.headers
    assert "narrator_job_events" not in app.extensions  # it never waited


@pytest.mark.parametrize(
    "headers, seconds",
    [
        (["wait=5"], 5),
        (["WAIT = 2.5"], 2.5),
        (["respond-async", "wait=7"], 7),  # several Prefer headers are one list
        (['return=minimal; foo="a,b;wait=1", wait=3'], 3),  # quoted commas and semicolons are not separators
        (["wait=4, wait=9"], 4),  # the first one wins (RFC 7240)
        (["wait=600"], MAX_WAIT),  # longer than the server waits: it waits what it can
        (["wait=abc, wait=3"], None),
        ([], None),
    ],
)
def test_prefer_parsing(headers, seconds):
    assert preferred_wait(headers) == seconds


# --- what waiting costs, and losing Redis ------------------------------------------------------------


def commands(r: redis.Redis) -> int:
    """Commands Redis has run, but for INFO (the measurement itself), PING and SUBSCRIBE (a
    subscription's health checks and its making, once per process, never per waiter: other apps
    of this test process may still hold one)."""
    stats = r.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_ping", "cmdstat_subscribe"))


def test_many_waiters_cost_redis_nothing_while_they_wait(app, client, store, redis_url):
    job_id = new_job(client)
    r = redis.Redis.from_url(redis_url)
    count = 200
    with ThreadPoolExecutor(max_workers=count) as many:
        answers = [
            many.submit(timed, lambda: app.test_client().get(f"/api/v1/jobs/{job_id}?wait=20")) for _ in range(count)
        ]
        until(lambda: waiters(app) == count, timeout=30)
        before = commands(r)
        time.sleep(1.0)
        spent = commands(r) - before
        print(f"\n{count} waiters: {spent} Redis commands in 1 s of waiting")
        assert spent == 0
        changed = time.monotonic()
        assert store.claim("test-worker", first=job_id)
        for answer in answers:
            response, _ = answer.result(timeout=10)
            assert response.get_json()["status"] == "running"
        all_answered = time.monotonic() - changed
    print(f"all {count} answered {all_answered:.3f} s after the change")
    assert all_answered < 2 * PROMPT, all_answered
    assert app.extensions["narrator_job_events"].subscriptions == 1  # one subscription for them all


def test_after_subscribing_again_every_waiter_looks_at_its_job(app, client, store, redis_url, pool):
    job_id = new_job(client)
    long_poll(pool, app, job_id, 0.1).result(timeout=5)  # subscribes
    events = app.extensions["narrator_job_events"]
    until(lambda: events.subscriptions == 1)
    waiting = long_poll(pool, app, job_id, 10)
    # A change whose message never came (written without one), in the same step as the subscription
    # dies: only the look every waiter takes after subscribing again can see it.
    r = redis.Redis.from_url(redis_url)
    pipe = r.pipeline(transaction=True)
    pipe.client_kill_filter(_type="pubsub")
    pipe.hset(store.key(job_id), mapping={"status": "running", "stage": "caption"})
    pipe.execute()
    response, seconds = waiting.result(timeout=5)
    assert response.get_json()["status"] == "running" and seconds < 2 * PROMPT, seconds
    assert events.subscriptions == 2


@pytest.mark.process
@requires_tool(bool(shutil.which("redis-server")), "redis-server")
def test_a_redis_outage_ends_no_wait_late_and_the_subscription_comes_back(tmp_path, pool):
    """A Redis of this test's own, stopped and started again on the same port."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    app = build(make_settings(redis_url=f"redis://127.0.0.1:{port}/0", storage_url=f"file://{tmp_path}/data"))
    try:
        with serving(command + ["--dir", str(tmp_path)], port):
            client = app.test_client()
            job_id = new_job(client)
            waiting = long_poll(pool, app, job_id, 1.5)
            until(lambda: app.extensions["narrator_job_events"].subscriptions == 1)
        response, seconds = waiting.result(timeout=5)  # Redis went away while it waited
        assert_error(response, 503, "redis_unavailable")  # its final read of the job had no Redis
        assert 1.5 <= seconds < 1.5 + PROMPT, seconds
        with serving(command + ["--dir", str(tmp_path)], port):
            store = app.extensions["narrator"].jobs
            job_id = new_job(client)  # the old one went with the old server's memory
            until(lambda: app.extensions["narrator_job_events"].subscriptions == 2, timeout=10)
            waiting = long_poll(pool, app, job_id, 10)
            assert store.claim("test-worker", first=job_id)
            response, seconds = waiting.result(timeout=5)
            assert response.get_json()["status"] == "running" and seconds < PROMPT
    finally:
        app.extensions["narrator_job_events"].close()
        app.extensions["narrator"].celery.close()


def test_a_forked_process_subscribes_for_itself(app, client, store, pool, monkeypatch):
    job_id = new_job(client)
    long_poll(pool, app, job_id, 0.1).result(timeout=5)
    events = app.extensions["narrator_job_events"]
    until(lambda: events.subscriptions == 1)
    monkeypatch.setattr("web.jobs.events.os.getpid", lambda: -1)  # as if in a child after fork
    waiting = long_poll(pool, app, job_id, 10)
    until(lambda: events.subscriptions == 2)  # its own reader, its own subscription
    assert store.claim("test-worker", first=job_id)
    response, seconds = waiting.result(timeout=5)
    assert response.get_json()["status"] == "running" and seconds < 2 * PROMPT


def test_the_subscription_ends_when_idle_and_comes_back_with_the_next_wait(app, client, store, pool, monkeypatch):
    monkeypatch.setattr("web.jobs.events.IDLE_SECONDS", 0.3)
    monkeypatch.setattr("web.jobs.events.READ_SECONDS", 0.1)
    job_id = new_job(client)
    long_poll(pool, app, job_id, 0.1).result(timeout=5)
    events = app.extensions["narrator_job_events"]
    until(lambda: not events.listening())  # nobody waits: no subscription
    waiting = long_poll(pool, app, job_id, 10)
    until(lambda: events.subscriptions == 2)
    assert store.claim("test-worker", first=job_id)
    response, seconds = waiting.result(timeout=5)
    assert response.get_json()["status"] == "running" and seconds < PROMPT
    assert app.extensions["narrator_job_events"].subscriptions == 2


# --- the real service -------------------------------------------------------------------------------


def at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Follower:
    """narrator_client's `wait` on one job, counting its requests and noting when the last came."""

    def __init__(self, base: str, job_id: str):
        self.client = Client(base)
        self.job_id, self.requests, self.job, self.answered = job_id, 0, None, 0.0
        self.client.session.hooks["response"].append(self.count)

    def count(self, response, *args, **kwargs):
        self.requests += 1
        self.answered = time.time()

    def __call__(self):
        self.job = self.client.wait(self.job_id, timeout=90)
        return self


@pytest.mark.serial
@pytest.mark.process
@pytest.mark.parametrize("storage_url", ["local"], indirect=True)
def test_acceptance_twenty_followers_and_a_waiting_submit(web_server, request):
    _, base = web_server
    ids = []
    for i in range(20):
        response = requests.post(
            f"{base}/api/v1/jobs", files={"image": (f"p{i}.png", png(color=(i * 12, 80, 40)), "image/png")}, timeout=10
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    with ThreadPoolExecutor(max_workers=20) as followers:
        following = [followers.submit(Follower(base, job_id)) for job_id in ids]
        time.sleep(2)  # no worker yet: every follower waits on a queued job
        request.getfixturevalue("celery_worker_process")  # starts one, and returns once it is ready
        done = [f.result(timeout=120) for f in following]
    assert all(f.job.status == "succeeded" for f in done), [f.job.status for f in done]
    per_job = sum(f.requests for f in done) / len(done)
    late = [f.answered - at(f.job.finished_at) for f in done]
    print(f"\nrequests per job {per_job:.2f} (max {max(f.requests for f in done)}), final answer after finished_at:"
          f" max {max(late):.3f} s")  # fmt: skip
    assert per_job <= 8, [f.requests for f in done]
    assert max(late) < 1.0, late

    # With the worker idle, a submit that prefers to wait answers with the finished job.
    photo = png(color=(1, 2, 3))
    response, seconds = timed(
        lambda: requests.post(
            f"{base}/api/v1/jobs",
            files={"image": ("p.png", photo, "image/png")},
            headers={"Prefer": "wait=60"},
            timeout=70,
        )
    )
    assert response.status_code == 202 and response.headers["Preference-Applied"] == "wait=60"
    assert response.json()["status"] == "succeeded" and response.json()["audio_url"], response.json()
    print(f"Prefer: wait=60 answered the succeeded job after {seconds:.2f} s")
