"""Rate limits and the queued-jobs cap against the real service (real HTTP server, real Redis, keys
made by `flask --app web.app keys create`), with the default limits: SUBMIT_RATE_LIMIT
"2/second;60/minute" and READ_RATE_LIMIT "20/second", per key, else session, else address."""

from __future__ import annotations

import time

import pytest
import redis
import requests

from shared.settings import Settings
from tests.support.keys import create_api_key
from tests.support.photos import photo
from web.middleware.limits import parse_limits

pytestmark = pytest.mark.parametrize("storage_url", ["local"], indirect=True)


PHOTO = photo("plum", (16, 16), "PNG")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def submit(base: str, headers=None) -> requests.Response:
    return requests.post(
        f"{base}/api/v1/jobs", files={"image": ("p.png", PHOTO, "image/png")}, headers=headers or {}, timeout=30
    )


def burst(base: str, count: int, headers=None) -> list[requests.Response]:
    """`count` submits back to back, well within one second."""
    started = time.monotonic()
    responses = [submit(base, headers) for _ in range(count)]
    assert time.monotonic() - started < 1.0, "too slow to test a per-second limit"
    return responses


def assert_rate_limited(response: requests.Response) -> int:
    assert response.status_code == 429, response.text[:300]
    assert response.json()["error"]["code"] == "rate_limited" and response.json()["error"]["message"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


@pytest.fixture
def default_limits(service_env, request):
    """The web server with the default limits (conftest gives the other tests generous ones)."""
    for name in ("SUBMIT_RATE_LIMIT", "READ_RATE_LIMIT", "MAX_QUEUED_PER_OWNER"):
        service_env.pop(name, None)
    service_env["SUBMIT_ADDRESS_RATE_LIMIT"] = Settings.model_fields["submit_address_rate_limit"].default
    assert Settings.model_fields["submit_rate_limit"].default == "2/second;60/minute"
    assert Settings.model_fields["read_rate_limit"].default == "20/second"
    return request.getfixturevalue("web_server")


def test_submits_over_the_limit_get_429_with_retry_after(default_limits, service_env):
    app, base = default_limits
    # 5 in well under a second meet at most two 1-second windows: at most 4 get through.
    responses = burst(base, 5)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 429} and 2 <= statuses.count(202) <= 4, statuses
    retry_after = assert_rate_limited(next(r for r in responses if r.status_code == 429))
    created = {job.id for job in app.extensions["narrator"].jobs.list(limit=100)[0]}
    assert created == {r.json()["id"] for r in responses if r.status_code == 202}  # a 429 made nothing

    # Counted per owner: a key has its own budget, and so has another key.
    alice, bob = create_api_key(service_env, "alice"), create_api_key(service_env, "bob")
    assert submit(base, bearer(alice)).status_code == 202
    keyed = burst(base, 5, bearer(bob))
    assert any(r.status_code == 429 for r in keyed)
    assert submit(base, bearer(alice)).status_code == 202  # her second: bob's burst is not hers

    # After Retry-After the address may submit again; the form and the API share the budget.
    time.sleep(retry_after + 0.05)
    started = time.monotonic()
    assert submit(base).status_code == 202
    # No cookie jar: each form post counts against the address, like the API submit before them.
    form = [
        requests.post(
            f"{base}/jobs",
            files={"image": ("p.png", PHOTO, "image/png")},
            headers={"Origin": base},
            allow_redirects=False,
            timeout=30,
        )
        for _ in range(4)
    ]
    assert time.monotonic() - started < 1.0, "too slow to test a per-second limit"
    assert 429 in [r.status_code for r in form]
    limited = next(r for r in form if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and limited.headers["Content-Type"].startswith("text/html")


def test_reads_over_the_limit_get_429_and_health_checks_never(default_limits):
    _, base = default_limits
    job_id = submit(base).json()["id"]
    url = f"{base}/api/v1/jobs/{job_id}"
    with requests.Session() as http:  # kept-alive connections: many reads within a second
        # The app's windows are seconds of this host's clock: a read sent and answered within one
        # second counted in that second's window. Read until one second holds 26 such reads (on
        # a busy machine a second may hold fewer), each second's other reads being at most one
        # on each edge (the reads are one after another).
        per_second: dict[int, list[int]] = {}
        statuses = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and max(map(len, per_second.values()), default=0) < 26:
            sent = time.time()
            response = http.get(url, timeout=10)
            statuses.append(response.status_code)
            if int(time.time()) == int(sent):
                per_second.setdefault(int(sent), []).append(response.status_code)
            if response.status_code == 429:
                limited = response
        assert set(statuses) <= {200, 429}, statuses
        full = [seen for seen in per_second.values() if len(seen) >= 26]
        assert full, f"too slow to test a per-second limit: at most {max(map(len, per_second.values()))} reads a second"
        # 20/second: the window's first reads pass (one read on its edge may have taken a place).
        assert full[0][:19] == [200] * 19 and full[0].count(200) in (19, 20), full[0]
        assert all(seen.count(200) <= 20 for seen in per_second.values()), per_second
        assert_rate_limited(limited)
        # The list, the photo and the audio count against the same budget.
        assert http.get(f"{url}/image", timeout=10).status_code in (200, 429)
        for path in ("/healthz", "/readyz"):
            assert {http.get(base + path, timeout=10).status_code for _ in range(60)} <= {200, 503}
        # The pages are not API reads.
        assert http.get(f"{base}/jobs/{job_id}", timeout=10).status_code == 200


def test_a_poll_pays_its_rate_limit_with_two_plain_commands(default_limits, service_env, redis_url):
    """One INCRBY and one EXPIRE NX per limit, in the round trip's pipeline: no Lua script."""
    _, base = default_limits
    key = create_api_key(service_env, "poller")
    url = f"{base}/api/v1/jobs/{submit(base, bearer(key)).json()['id']}"
    store = redis.Redis.from_url(redis_url)
    polls = 10  # within 20/second even in one window
    with requests.Session() as http:
        store.config_resetstat()
        assert all(http.get(url, headers=bearer(key), timeout=10).status_code == 200 for _ in range(polls))
    calls = {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in store.info("commandstats").items()}
    assert not {name for name in calls if name.startswith(("eval", "fcall", "script"))}, calls
    assert calls.get("incrby", 0) + calls.get("expire", 0) <= 2 * polls, calls  # one limit: 20/second
    ttls = [store.pttl(counter) for counter in store.scan_iter("ratelimit:read:key:poller:*")]
    assert ttls and max(ttls) > 0 and all(ttl <= 1000 for ttl in ttls), ttls  # each lives one window at most


@pytest.fixture
def one_read_a_minute(service_env, request):
    service_env["READ_RATE_LIMIT"] = "1/minute"
    return request.getfixturevalue("web_server")


def test_retry_after_is_the_time_left_in_the_window(one_read_a_minute):
    _, base = one_read_a_minute
    url = f"{base}/api/v1/jobs/{submit(base).json()['id']}"
    before = time.time()
    responses = [requests.get(url, timeout=10) for _ in range(2)]
    after = time.time()
    if int(before // 60) != int(after // 60):
        pytest.skip("the two reads met two windows")
    assert [r.status_code for r in responses] == [200, 429]
    left = 60 - after % 60
    assert assert_rate_limited(responses[1]) in range(max(1, int(left)), int(left) + 3)
    assert "limit: 1 per 1 minute" in responses[1].json()["error"]["message"]


def test_the_limit_notation(storage_url):  # storage_url: this module's parametrisation asks for it
    assert [(r.amount, r.window) for r in parse_limits(" 2/second; 60 per minute|5/2 hours,1/day ")] == [
        (2, 1),
        (60, 60),
        (5, 7200),
        (1, 86400),
    ]
    for wrong in ("", "lots", "2/second;", "1/fortnight", "1/s", "2/0 seconds"):
        with pytest.raises(ValueError):
            parse_limits(wrong)


@pytest.fixture
def proxied(service_env, request):
    """Behind one trusted proxy (PROXY_HOPS=1): the client address is the proxy's X-Forwarded-For."""
    for name in ("SUBMIT_RATE_LIMIT", "READ_RATE_LIMIT"):
        service_env.pop(name, None)
    service_env["PROXY_HOPS"] = "1"
    return request.getfixturevalue("web_server")


def test_limits_per_client_address_honour_proxy_hops(proxied):
    _, base = proxied
    first = burst(base, 5, {"X-Forwarded-For": "198.51.100.7"})
    assert 429 in [r.status_code for r in first]
    # Another client behind the same proxy has its own budget.
    assert submit(base, {"X-Forwarded-For": "198.51.100.8"}).status_code == 202


def test_without_a_trusted_proxy_x_forwarded_for_does_not_reset_the_budget(default_limits):
    _, base = default_limits
    statuses = [submit(base, {"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(5)]
    assert 429 in statuses


@pytest.fixture
def capped(service_env, request):
    service_env["MAX_QUEUED_PER_OWNER"] = "2"  # no worker runs: jobs stay queued
    return request.getfixturevalue("web_server")


def test_too_many_queued(capped, service_env):
    app, base = capped
    key = create_api_key(service_env, "busy")
    ids = [submit(base, bearer(key)).json()["id"] for _ in range(2)]
    refused = submit(base, bearer(key))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_queued"
    assert app.extensions["narrator"].jobs.queued_count("key:busy") == 2
    # Another owner is not held back by this one's queue, nor is an ownerless call.
    other = create_api_key(service_env, "idle")
    assert submit(base, bearer(other)).status_code == 202
    assert submit(base).status_code == 202
    # Once one of its jobs leaves the queue, the owner may submit again.
    assert requests.post(f"{base}/api/v1/jobs/{ids[0]}/cancel", headers=bearer(key), timeout=10).status_code == 200
    assert submit(base, bearer(key)).status_code == 202

    # A browser session is capped the same way; the form says so.
    browser = requests.Session()
    for expected in (303, 303, 429):
        response = browser.post(
            f"{base}/jobs",
            files={"image": ("p.png", PHOTO, "image/png")},
            headers={"Origin": base},
            allow_redirects=False,
            timeout=30,
        )
        assert response.status_code == expected
    assert "jobs waiting" in response.text and 'role="alert"' in response.text


@pytest.fixture
def three_a_second_per_address(service_env, request):
    service_env["SUBMIT_ADDRESS_RATE_LIMIT"] = "3/second"  # the per-owner limits stay generous
    return request.getfixturevalue("web_server")


def form_post(base: str, cookie: str | None = None) -> requests.Response:
    return requests.post(
        f"{base}/jobs",
        files={"image": ("p.png", PHOTO, "image/png")},
        headers={"Origin": base, **({"Cookie": f"narrator_session={cookie}"} if cookie else {})},
        allow_redirects=False,
        timeout=30,
    )


def posts_in_one_window(base: str, cookies: list) -> list[int]:
    time.sleep(1 - time.time() % 1 + 0.01)  # at the start of a one-second window
    started = time.time()
    statuses = [form_post(base, cookie).status_code for cookie in cookies]
    assert int(time.time()) == int(started), "too slow to test a per-second limit"
    return statuses


def test_one_address_is_limited_whatever_session_each_form_post_carries(three_a_second_per_address):
    app, base = three_a_second_per_address
    from web.middleware.auth import SESSION_FIELD, new_session_id

    # Twelve sessions of their own, as twelve earlier visits would have left them.
    serializer = app.session_interface.get_signing_serializer(app)
    sessions = [serializer.dumps({SESSION_FIELD: new_session_id()}) for _ in range(12)]
    for cookies in (sessions, [None] * 12):
        statuses = posts_in_one_window(base, cookies)
        assert set(statuses) <= {303, 429} and statuses.count(429) >= 8, statuses
    # The API without a key counts against the address too; a key keeps its own budget.
    assert 429 in [r.status_code for r in burst(base, 5)]


def test_ownerless_submits_are_capped_and_take_one_turn_per_address(capped, redis_url):
    app, base = capped
    store = app.extensions["narrator"].jobs
    ids = [submit(base).json()["id"] for _ in range(2)]
    refused = submit(base)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_queued"
    assert {store.get(job_id).lane for job_id in ids} == {"addr:127.0.0.1"}
    assert store.get(ids[0]).owner is None  # still reachable by its id alone, never listed
    assert [o.decode() for o in redis.Redis.from_url(redis_url).zrange(store.OWNERS, 0, -1)] == ["addr:127.0.0.1"]


def test_an_ipv6_client_counts_by_its_slash_64(storage_url):  # storage_url: this module's parametrisation
    from flask import Flask

    from web.middleware.auth import client_network

    app = Flask(__name__)
    for remote, expected in (
        ("2001:db8:1:2:aaaa::1", "addr:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "addr:2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "addr:198.51.100.7"),
        ("198.51.100.7", "addr:198.51.100.7"),
    ):
        with app.test_request_context(environ_base={"REMOTE_ADDR": remote}):
            assert client_network() == expected
