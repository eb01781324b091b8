"""Owners against the real service: the app on a real HTTP server and a real Redis, API keys made by
`flask --app web.app keys create`, browser sessions kept in a real cookie jar (requests.Session).

Two owners never see each other's jobs (404, as for a job that does not exist); an ownerless job is
reachable by its id and never listed; a browser session lists its own stories on the home page;
the pages refuse posts from other sites; the Host header never makes it into a URL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import requests

from tests.support.env import ROOT
from tests.support.keys import create_api_key
from tests.support.photos import photo

pytestmark = pytest.mark.parametrize("storage_url", ["local"], indirect=True)


def png(color="teal") -> bytes:
    return photo(color, (32, 24), "PNG")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def submit(base: str, headers=None, session=None, **fields) -> requests.Response:
    http = session or requests
    return http.post(
        f"{base}/api/v1/jobs",
        files={"image": ("p.png", png(), "image/png")},
        data=fields,
        headers=headers or {},
        timeout=30,
    )


def form_submit(base: str, session: requests.Session, headers=None) -> requests.Response:
    """The upload form as a browser posts it from our own page (Origin is the page's)."""
    return session.post(
        f"{base}/jobs",
        files={"image": ("sunset.png", png("orange"), "image/png")},
        headers={"Origin": base, **(headers or {})},
        allow_redirects=False,
        timeout=30,
    )


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.json()["error"]["code"] == code, response.text[:300]


def finish(app, job_id: str) -> None:
    """Play the worker's part through the job store."""
    svc = app.extensions["narrator"]
    assert svc.jobs.claim("test-worker", first=job_id)
    assert svc.jobs.progress(job_id, "speech", caption="A teal card.", story="The card waited.")
    svc.storage.put(f"audio/{job_id}.mp3", b"ID3 not really an mp3", "audio/mpeg")
    assert svc.jobs.succeed(job_id, f"audio/{job_id}.mp3", 1.0)


def keys_command(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "web.app", "keys", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


class Links(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.hrefs: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href", ""))


def job_links(html: str) -> list[str]:
    return [m.group(1) for href in Links(html).hrefs if (m := re.fullmatch(r"/jobs/([A-Za-z0-9_-]{22})", href))]


# --- API keys -------------------------------------------------------------------------------------


def test_two_keys_never_see_each_others_jobs(web_server, service_env):
    app, base = web_server
    alice, bob = create_api_key(service_env, "alice"), create_api_key(service_env, "bob")
    assert alice.startswith("nk_") and alice != bob
    a_jobs = [submit(base, bearer(alice)).json()["id"] for _ in range(2)]
    b_job = submit(base, bearer(bob)).json()["id"]
    assert app.extensions["narrator"].jobs.get(a_jobs[0]).owner == "key:alice"
    finish(app, a_jobs[0])
    finish(app, b_job)

    listed = requests.get(f"{base}/api/v1/jobs", headers=bearer(alice), timeout=10).json()
    assert [job["id"] for job in listed["jobs"]] == a_jobs[::-1]
    assert [
        job["id"] for job in requests.get(f"{base}/api/v1/jobs", headers=bearer(bob), timeout=10).json()["jobs"]
    ] == [b_job]

    for mine, theirs, key in ((a_jobs[0], b_job, alice), (b_job, a_jobs[0], bob)):
        for suffix in ("", "/audio", "/image"):
            assert (
                requests.get(f"{base}/api/v1/jobs/{mine}{suffix}", headers=bearer(key), timeout=10).status_code == 200
            )
            assert_error(
                requests.get(f"{base}/api/v1/jobs/{theirs}{suffix}", headers=bearer(key), timeout=10), 404, "not_found"
            )
        # the pages answer the same for a key (a browser never sends one, a script might)
        assert requests.get(f"{base}/jobs/{theirs}", headers=bearer(key), timeout=10).status_code == 404
        # a job of someone else's is as unknown as no job at all
        assert_error(requests.get(f"{base}/api/v1/jobs/{theirs}", timeout=10), 404, "not_found")

    # Cancel: bob cannot, alice can.
    assert_error(
        requests.post(f"{base}/api/v1/jobs/{a_jobs[1]}/cancel", headers=bearer(bob), timeout=10), 404, "not_found"
    )
    assert app.extensions["narrator"].jobs.get(a_jobs[1]).status.value == "queued"
    canceled = requests.post(f"{base}/api/v1/jobs/{a_jobs[1]}/cancel", headers=bearer(alice), timeout=10)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"


def test_an_ownerless_job_is_reachable_by_id_and_never_listed(web_server, service_env):
    app, base = web_server
    alice = create_api_key(service_env, "alice")
    job_id = submit(base).json()["id"]  # no key: REQUIRE_API_KEY is off
    assert app.extensions["narrator"].jobs.get(job_id).owner is None
    finish(app, job_id)
    for headers in ({}, bearer(alice)):
        for suffix in ("", "/audio", "/image"):
            assert requests.get(f"{base}/api/v1/jobs/{job_id}{suffix}", headers=headers, timeout=10).status_code == 200
    assert requests.get(f"{base}/api/v1/jobs", headers=bearer(alice), timeout=10).json()["jobs"] == []
    assert_error(requests.get(f"{base}/api/v1/jobs", timeout=10), 401, "api_key_required")
    assert app.extensions["narrator"].jobs.list(limit=10)[0][0].id == job_id  # it is there, internally


@pytest.mark.process  # runs `flask keys` itself
def test_wrong_and_revoked_keys_are_401(web_server, service_env):
    _, base = web_server
    key = create_api_key(service_env, "carol")
    assert submit(base, bearer(key)).status_code == 202

    # The command: a name exists once, list never shows a key, revoke takes effect at once.
    again = keys_command(service_env, "create", "carol")
    assert again.returncode != 0 and "exists" in (again.stdout + again.stderr)
    listed = keys_command(service_env, "list")
    assert listed.returncode == 0 and "carol" in listed.stdout and key not in listed.stdout
    assert re.search(r"carol\s+\d{4}-\d\d-\d\dT", listed.stdout)
    assert keys_command(service_env, "revoke", "carol").returncode == 0
    assert keys_command(service_env, "revoke", "carol").returncode != 0  # nothing left to revoke
    assert "carol" not in keys_command(service_env, "list").stdout

    for headers in (
        bearer(key),
        bearer("nk_" + "x" * 43),
        {"Authorization": "Basic YWxhZGRpbjpvcGVu"},
        {"Authorization": "Bearer"},
    ):
        for response in (
            submit(base, headers),
            requests.get(f"{base}/api/v1/jobs", headers=headers, timeout=10),
            requests.get(f"{base}/api/v1/jobs/abcdefghijklmnopqrstuv", headers=headers, timeout=10),
        ):
            assert_error(response, 401, "invalid_api_key")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # health checks never look at keys
    assert requests.get(f"{base}/healthz", headers=bearer(key), timeout=10).status_code == 200


@pytest.fixture
def strict_server(service_env, request):
    """REQUIRE_API_KEY=true."""
    service_env["REQUIRE_API_KEY"] = "true"
    return request.getfixturevalue("web_server")


def test_require_api_key(strict_server, service_env):
    app, base = strict_server
    key = create_api_key(service_env, "dave")
    assert_error(submit(base), 401, "api_key_required")
    keyed = submit(base, bearer(key))
    assert keyed.status_code == 202
    job_id = keyed.json()["id"]
    for response in (
        requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=10),
        requests.get(f"{base}/api/v1/jobs", timeout=10),
        requests.post(f"{base}/api/v1/jobs/{job_id}/cancel", timeout=10),
    ):
        assert_error(response, 401, "api_key_required")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{base}/api/v1/jobs/{job_id}", headers=bearer(key), timeout=10).status_code == 200
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{base}/readyz", timeout=10).status_code in (200, 503)  # answered, not refused

    # The web form keeps working through its browser session, and the job page reads the API
    # (poll, photo) with the session's cookie; the API's POSTs never act for a cookie.
    browser = requests.Session()
    assert browser.get(f"{base}/", timeout=10).status_code == 200
    posted = form_submit(base, browser)
    assert posted.status_code == 303
    own = posted.headers["Location"].rsplit("/", 1)[1]
    assert browser.get(f"{base}/jobs/{own}", timeout=10).status_code == 200
    assert browser.get(f"{base}/api/v1/jobs/{own}", timeout=10).json()["status"] == "queued"
    assert browser.get(f"{base}/api/v1/jobs/{own}/image", timeout=10).status_code == 200
    assert [job["id"] for job in browser.get(f"{base}/api/v1/jobs", timeout=10).json()["jobs"]] == [own]
    assert_error(submit(base, session=browser), 401, "api_key_required")
    assert_error(browser.post(f"{base}/api/v1/jobs/{own}/cancel", timeout=10), 401, "api_key_required")


# --- browser sessions -------------------------------------------------------------------------------


def test_a_browser_session_sees_its_own_stories_only(web_server):
    app, base = web_server
    first, second = requests.Session(), requests.Session()
    home = first.get(f"{base}/", timeout=10)
    assert home.status_code == 200 and "Set-Cookie" not in home.headers  # no session until a submit
    assert "Your recent stories" not in home.text

    posted = [form_submit(base, first) for _ in range(2)]
    assert [p.status_code for p in posted] == [303, 303]
    mine = [p.headers["Location"].rsplit("/", 1)[1] for p in posted]
    owner = app.extensions["narrator"].jobs.get(mine[0]).owner
    assert owner.startswith("session:") and app.extensions["narrator"].jobs.get(mine[1]).owner == owner
    cookie = posted[0].headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie

    home = first.get(f"{base}/", timeout=10)
    assert "Your recent stories" in home.text and job_links(home.text) == mine[::-1]
    assert first.get(f"{base}/jobs/{mine[0]}", timeout=10).status_code == 200

    # Another browser: its own story only; the first one's are unknown to it.
    theirs = form_submit(base, second).headers["Location"].rsplit("/", 1)[1]
    assert job_links(second.get(f"{base}/", timeout=10).text) == [theirs]
    for job_id in mine:
        assert second.get(f"{base}/jobs/{job_id}", timeout=10).status_code == 404
        assert_error(second.get(f"{base}/api/v1/jobs/{job_id}", timeout=10), 404, "not_found")
        assert second.get(f"{base}/api/v1/jobs/{job_id}/image", timeout=10).status_code == 404
        canceled = second.post(
            f"{base}/jobs/{job_id}/cancel", headers={"Origin": base}, timeout=10, allow_redirects=False
        )
        assert canceled.status_code == 404
        assert app.extensions["narrator"].jobs.get(job_id).status.value == "queued"
    # and a client with no session at all
    assert requests.get(f"{base}/jobs/{mine[0]}", timeout=10).status_code == 404
    assert theirs not in job_links(first.get(f"{base}/", timeout=10).text)

    # Its own cancel works, from its own page.
    done = first.post(
        f"{base}/jobs/{mine[0]}/cancel",
        headers={"Referer": f"{base}/jobs/{mine[0]}"},
        timeout=10,
        allow_redirects=False,
    )
    assert done.status_code == 303
    assert app.extensions["narrator"].jobs.get(mine[0]).status.value == "canceled"


# --- cross-site posts and forged hosts ----------------------------------------------------------------


def test_cross_site_form_posts_are_refused(web_server):
    app, base = web_server
    store = app.extensions["narrator"].jobs
    browser = requests.Session()
    job_id = form_submit(base, browser).headers["Location"].rsplit("/", 1)[1]
    evil = "https://evil.example"
    for headers in (
        {"Origin": evil},
        {"Origin": "null"},
        {"Referer": f"{evil}/page"},
        {"Origin": evil, "Referer": f"{base}/"},
        {},
    ):
        response = browser.post(f"{base}/jobs/{job_id}/cancel", headers=headers, timeout=10, allow_redirects=False)
        assert response.status_code == 403, headers
        assert store.get(job_id).status.value == "queued"
        response = browser.post(
            f"{base}/jobs",
            files={"image": ("x.png", png(), "image/png")},
            headers=headers,
            timeout=10,
            allow_redirects=False,
        )
        assert response.status_code == 403, headers
    assert [job.id for job in store.list(limit=10)[0]] == [job_id]  # nothing new was made
    # The same posts from our own page go through.
    assert (
        browser.post(
            f"{base}/jobs/{job_id}/cancel", headers={"Origin": base}, timeout=10, allow_redirects=False
        ).status_code
        == 303
    )
    assert store.get(job_id).status.value == "canceled"


def test_a_forged_host_header_never_reaches_a_url(web_server):
    app, base = web_server
    refused = submit(base, headers={"Host": "evil.example"})  # not a host this app answers to (TRUSTED_HOSTS)
    assert refused.status_code == 400 and "evil.example" not in refused.text
    job_id = submit(base).json()["id"]
    finish(app, job_id)
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}  # no trusted proxy sent these
    job = requests.get(f"{base}/api/v1/jobs/{job_id}", headers=forged, timeout=10).json()
    assert job["audio_url"] == f"{base}/api/v1/jobs/{job_id}/audio"  # PUBLIC_BASE_URL (the fixture's)
    page = requests.get(f"{base}/jobs/{job_id}", headers=forged, timeout=10).text
    assert "evil.example" not in page and f'src="{base}/api/v1/jobs/{job_id}/audio"' in page
    created = submit(base, headers=forged)
    assert created.headers["Location"] == f"/api/v1/jobs/{created.json()['id']}"
