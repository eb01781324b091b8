"""The pages in real headless Chromium (Debian's package, driven by Playwright) against a real server.

The worker's part is played from the test through the job store, so this checks the page alone:
upload through the form, then watch the job page update itself as the job advances.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from tests.support.browser import ARGS, CHROMIUM, until
from tests.support.env import requires_tool
from tests.support.photos import photo as make_photo

pytestmark = [
    requires_tool(Path(CHROMIUM).exists(), "Debian's chromium"),
    pytest.mark.parametrize("storage_url", ["local"], indirect=True),
    pytest.mark.process,  # Chromium
]


def mp3() -> bytes:
    from pydub import AudioSegment

    buf = io.BytesIO()
    AudioSegment.silent(duration=500, frame_rate=16000).export(buf, format="mp3")
    return buf.getvalue()


@pytest.fixture
def served(web_server):
    """The app on a real HTTP server (tests/conftest.py), with local storage."""
    return web_server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "harbour.jpg"
    path.write_bytes(make_photo("navy", (120, 80)))
    return path


def test_upload_and_watch_the_job_finish(browser, served, photo):
    from playwright.sync_api import expect

    app, base = served
    store, storage = app.extensions["narrator"].jobs, app.extensions["narrator"].storage
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    page.goto(base + "/")
    page.get_by_label("Photo").set_input_files(photo)
    page.get_by_label("Story length in words").fill("30")
    page.get_by_role("button", name="Make my story").click()
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{22}$"))
    job_id = page.url.rsplit("/", 1)[1]
    assert store.get(job_id).words == 30
    expect(page.locator("#status")).to_have_text("Waiting for a worker…")
    assert page.locator("img[alt^='The photo you uploaded']").evaluate("img => img.naturalWidth") == 120
    page.evaluate("window.sameDocument = true")  # survives only if the page never reloads

    assert store.claim("test-worker", first=job_id)
    expect(page.locator("#status")).to_have_text("Working: describing the photo…")
    expect(page.locator('[data-step="caption"]')).to_have_class("step current")

    assert store.progress(job_id, "story", caption="A navy blue rectangle.")
    expect(page.locator("#caption")).to_have_text("A navy blue rectangle.")
    expect(page.locator('[data-step="caption"]')).to_have_class("step done")

    assert store.progress(job_id, "speech", story="The sea kept its colour all night.")
    expect(page.locator("#story")).to_have_text("The sea kept its colour all night.")
    expect(page.locator("#listen")).to_be_hidden()

    storage.put(f"audio/{job_id}.mp3", mp3(), "audio/mpeg")
    assert store.succeed(job_id, f"audio/{job_id}.mp3", 0.5)
    audio_url = f"{base}/api/v1/jobs/{job_id}/audio"
    expect(page.locator("#audio")).to_have_attribute("src", audio_url)
    expect(page.locator("#status")).to_have_text("Done: your story is ready.")
    expect(page.locator("#listen")).to_be_visible()
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#download")).to_have_attribute("href", audio_url + "?download=1")
    # The browser can actually load and decode the MP3 it was given.
    until(page, "document.getElementById('audio').readyState >= 1", 10)
    assert abs(page.evaluate("document.getElementById('audio').duration") - 0.5) < 0.2
    assert page.evaluate("window.sameDocument") is True
    assert problems == []
    page.close()


def test_form_error_is_shown(browser, served, tmp_path):
    _, base = served
    bogus = tmp_path / "notes.png"
    bogus.write_text("not really a picture")
    page = browser.new_page()
    page.goto(base + "/")
    page.get_by_label("Photo").set_input_files(bogus)
    page.get_by_role("button", name="Make my story").click()
    alert = page.get_by_role("alert")
    assert "not a readable image" in alert.text_content()
    assert page.url == base + "/jobs"
    page.close()


def test_without_javascript_the_page_refreshes(browser, served, photo):
    from playwright.sync_api import expect

    app, base = served
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(base + "/")
    page.get_by_label("Photo").set_input_files(photo)
    page.get_by_role("button", name="Make my story").click()
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{22}$"))
    job_id = page.url.rsplit("/", 1)[1]
    store = app.extensions["narrator"].jobs
    store.claim("test-worker", first=job_id)
    store.progress(job_id, "story", caption="Seen after a refresh.")
    expect(page.locator("#caption")).to_have_text("Seen after a refresh.", timeout=10_000)
    context.close()


def test_the_home_page_lists_this_browsers_stories(browser, served, photo):
    _, base = served
    context = browser.new_context()
    page = context.new_page()
    page.goto(base + "/")
    assert page.get_by_role("heading", name="Your recent stories").count() == 0
    page.get_by_label("Photo").set_input_files(photo)
    page.get_by_role("button", name="Make my story").click()  # a real same-origin post (Origin checked)
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{22}$"))
    job_path = page.url[len(base) :]
    page.get_by_role("link", name="Make another story").click()
    recent = page.locator("#recent a")
    assert recent.count() == 1 and recent.first.get_attribute("href") == job_path
    assert recent.first.text_content() == "harbour.jpg"
    other = browser.new_context()  # another browser: neither the list nor the job
    stranger = other.new_page()
    stranger.goto(base + "/")
    assert stranger.locator("#recent a").count() == 0
    assert stranger.goto(base + job_path).status == 404
    other.close()
    context.close()
