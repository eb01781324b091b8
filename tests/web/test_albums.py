"""Several photos per form post, against the real service (HTTP server, Redis, storage; a real worker
and Debian's Chromium for the end-to-end case): each photo its own job, one album page for them all,
all-or-nothing checks, the album only for its session, and photos counted by SUBMIT_RATE_LIMIT."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import requests
from PIL import Image

from shared.jobs import JobStatus
from tests.support.browser import ARGS, CHROMIUM, until
from tests.support.env import requires_tool
from tests.support.photos import photo
from tests.support.web import job_records

pytestmark = pytest.mark.process  # Chromium


def jpeg(color: str = "plum", size=(40, 30), noise: int = 0) -> bytes:
    if noise:  # random pixels barely compress: a photo of about `noise` bytes
        side = int((noise / 2) ** 0.5)
        buf = io.BytesIO()
        Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "JPEG", quality=100)
        return buf.getvalue()
    return photo(color, size, quality=100)


def post_form(base: str, session: requests.Session, photos: list[tuple[str, bytes]], **fields):
    files = [("image", (name, data, "image/jpeg")) for name, data in photos]
    return session.post(
        f"{base}/jobs", files=files, data=fields, headers={"Origin": base}, allow_redirects=False, timeout=30
    )


def album_ids(base: str, session: requests.Session, location: str) -> list[str]:
    page = session.get(base + location, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    return re.findall(r'data-job-id="([A-Za-z0-9_-]{22})"', page.text)


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"file://{tmp_path}/data"  # one backend keeps it short; the photos' bytes are all that is stored


@pytest.fixture
def service_env(service_env) -> dict:
    return {**service_env, "MAX_UPLOAD_MB": "1"}


def test_three_photos_make_three_jobs_on_one_album_page(web_server):
    app, base = web_server
    store, storage = app.extensions["narrator"].jobs, app.extensions["narrator"].storage
    browser = requests.Session()
    photos = [(f"p{i}.jpg", jpeg(color)) for i, color in enumerate(("red", "green", "blue"))]
    response = post_form(base, browser, photos, words="20")
    assert response.status_code == 303, response.text[:500]
    location = response.headers["Location"]
    assert re.fullmatch(r"/albums/[A-Za-z0-9_-]{22}", location)
    ids = album_ids(base, browser, location)
    assert len(ids) == 3
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.filename for job in jobs] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert all(job.status == JobStatus.QUEUED and job.words == 20 for job in jobs)
    assert len({job.owner for job in jobs}) == 1 and jobs[0].owner.startswith("session:")
    assert [storage.get(job.input_key) for job in jobs] == [data for _, data in photos]
    page = browser.get(base + location, timeout=10).text
    assert 'http-equiv="refresh"' in page and "/static/job.js" in page  # updates with and without JS
    feed = browser.get(f"{base}{location}/jobs", timeout=10).json()
    assert [job["id"] for job in feed["jobs"]] == ids and feed["jobs"][0]["status"] == "queued"
    for job_id in ids:  # each a real job of this browser's session
        assert browser.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()["id"] == job_id
    # Another browser sees neither the album nor its feed.
    stranger = requests.Session()
    assert stranger.get(base + location, timeout=10).status_code == 404
    assert stranger.get(f"{base}{location}/jobs", headers={"Accept": "application/json"}, timeout=10).status_code == 404
    assert requests.get(f"{base}/albums/{'x' * 22}", timeout=10).status_code == 404


def test_bad_selections_are_refused_whole_and_create_nothing(web_server, redis_url):
    import redis

    app, base = web_server
    browser = requests.Session()
    too_many = post_form(base, browser, [(f"p{i}.jpg", jpeg()) for i in range(21)], words="25")
    assert too_many.status_code == 400 and "choose at most 20" in too_many.text
    assert 'value="25"' in too_many.text  # the form keeps what was typed
    selection = [("fine.jpg", jpeg()), ("notes.jpg", b"not a photo"), ("huge.jpg", jpeg(noise=1_200_000))]
    bad = post_form(base, browser, selection)
    assert bad.status_code == 415 and 'role="alert"' in bad.text
    assert "2 of the 3 photos" in bad.text and "notes.jpg: The file is not a readable image" in bad.text
    assert "huge.jpg: larger than the 1 MB limit" in bad.text and "fine.jpg" not in bad.text
    store = redis.Redis.from_url(redis_url)
    assert job_records(store) == 0 and not list(store.scan_iter("album:*"))
    # The form's body may hold 20 photos of MAX_UPLOAD_MB each; the API's stays at one photo.
    big = [(f"big{i}.jpg", jpeg(noise=700_000)) for i in range(3)]
    assert all(600_000 < len(data) < 1024 * 1024 for _, data in big)
    assert post_form(base, browser, big).status_code == 303
    api = requests.post(f"{base}/api/v1/jobs", files=[("image", (n, d, "image/jpeg")) for n, d in big[:2]], timeout=30)
    assert api.status_code == 413 and api.json()["error"]["code"] == "too_large"


@pytest.fixture
def tight_limits(service_env):
    service_env["SUBMIT_RATE_LIMIT"] = "3/second;12/minute"


def test_the_per_minute_limit_counts_photos_and_the_per_second_one_posts(tight_limits, web_server):
    _, base = web_server
    browser = requests.Session()
    album = [(f"p{i}.jpg", jpeg()) for i in range(5)]
    # The first post makes the session (and counts against the address): the rest count against it.
    assert post_form(base, browser, album[:1]).status_code == 303
    # 5 photos would break 3/second if counted one by one there; per post, two albums fit.
    assert post_form(base, browser, album).status_code == 303
    assert post_form(base, browser, album).status_code == 303
    third = post_form(base, browser, album)  # 15 photos in the minute: over 12
    assert third.status_code == 429 and "Too many requests" in third.text
    assert browser.get(f"{base}/api/v1/jobs", timeout=10).status_code == 200  # reads are not submits


@requires_tool(Path(CHROMIUM).exists(), "Debian's chromium")
def test_a_browser_uploads_three_photos_and_watches_all_finish(web_server, celery_worker_process, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _, base = web_server
    files = []
    for name, color in (("harbour.jpg", "navy"), ("field.jpg", "gold"), ("forest.jpg", "darkgreen")):
        path = tmp_path / name
        path.write_bytes(photo(color))
        files.append(path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto(base + "/")
        page.get_by_label("Photos").set_input_files(files)
        page.get_by_role("button", name="Make my story").click()
        page.wait_for_url(re.compile(r"/albums/[A-Za-z0-9_-]{22}$"))
        page.evaluate("window.sameDocument = true")  # survives only if the page never reloads
        # Served while the worker is still at it: what follows is job.js's doing.
        assert page.locator("#album").get_attribute("data-finished") == "false"
        cards = page.locator(".album-job")
        expect(cards).to_have_count(3)
        for i, name in enumerate(("harbour.jpg", "field.jpg", "forest.jpg")):
            card = cards.nth(i)
            expect(card.get_by_role("heading")).to_have_text(name)
            expect(card.locator('[data-field="status"]')).to_have_text("Done: your story is ready.", timeout=60_000)
            expect(card.locator('[data-field="listen"]')).to_be_visible()
            expect(card.locator('[data-field="story"]')).not_to_have_class(re.compile("placeholder"))
            expect(card.get_by_label("The story", exact=True)).to_have_attribute("data-field", "story")  # labelled
            src = card.locator("audio").get_attribute("src")
            assert re.fullmatch(rf"{base}/api/v1/jobs/[A-Za-z0-9_-]{{22}}/audio", src)
            assert page.request.get(src).headers["content-type"] == "audio/mpeg"
        # The browser can load and decode one of the MP3s it was given.
        page.evaluate("document.querySelector('.album-job audio').load()")
        until(page, "document.querySelector('.album-job audio').readyState >= 1", 10)
        assert page.evaluate("document.querySelector('.album-job audio').duration") > 0
        assert page.evaluate("window.sameDocument") is True
        assert problems == []
        browser.close()
