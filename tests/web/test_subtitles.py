"""Word-timed subtitles through the real service: a real Celery worker (offline tiny models), S3 over
HTTP (moto), the web app on a real HTTP server, and the job page's read-along in headless Chromium."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.audio import decoded_seconds, parse_vtt
from tests.support.browser import ARGS as BROWSER_ARGS
from tests.support.browser import CHROMIUM, until
from tests.support.env import requires_tool
from tests.support.photos import photo
from worker.engine.speech_text import normalize_text

ARGS = [*BROWSER_ARGS, "--autoplay-policy=no-user-gesture-required"]


def http(method: str, url: str, photo: bytes | None = None) -> tuple[int, dict, bytes]:
    """A real HTTP request (redirects followed); a multipart upload of `photo` when given."""
    data, headers = None, {}
    if photo is not None:
        boundary = uuid.uuid4().hex
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="words"\r\n\r\n30\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="seed"\r\n\r\n4\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + photo
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def jpeg() -> bytes:
    return photo("teal")


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)
def test_no_subtitles_before_success_or_without_them(web_server):
    app, base = web_server
    store, storage = app.extensions["narrator"].jobs, app.extensions["narrator"].storage
    status, _, body = http("POST", f"{base}/api/v1/jobs", jpeg())
    job = json.loads(body)
    assert status == 202 and job["subtitles_url"] is None
    status, _, body = http("GET", f"{base}/api/v1/jobs/{job['id']}/subtitles.vtt")
    assert (status, error_code(body)) == (409, "not_ready")
    status, _, body = http("GET", f"{base}/api/v1/jobs/nosuchjob/subtitles.vtt")
    assert (status, error_code(body)) == (404, "not_found")

    # Succeeded, but without subtitles (a job finished before they existed), or with them gone.
    assert store.claim("test-worker", first=job["id"])
    assert store.succeed(job["id"], "audio/x.mp3", 1.0)
    assert json.loads(http("GET", f"{base}/api/v1/jobs/{job['id']}")[2])["subtitles_url"] is None
    status, _, body = http("GET", f"{base}/api/v1/jobs/{job['id']}/subtitles.vtt")
    assert (status, error_code(body)) == (404, "subtitles_missing")
    store.redis.hset(store.key(job["id"]), "subtitles_key", "subtitles/gone.vtt")
    assert (
        json.loads(http("GET", f"{base}/api/v1/jobs/{job['id']}")[2])["subtitles_url"]
        == f"{base}/api/v1/jobs/{job['id']}/subtitles.vtt"
    )
    assert http("GET", f"{base}/api/v1/jobs/{job['id']}/subtitles.vtt")[0] == 404
    storage.put("subtitles/gone.vtt", b"WEBVTT\n", "text/vtt")
    assert http("GET", f"{base}/api/v1/jobs/{job['id']}/subtitles.vtt")[0] == 200


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


HIGHLIGHT = "document.querySelector('#story .speaking')"
LIT_INDEX = f"(() => {{ const lit = {HIGHLIGHT}; return lit ? [...lit.parentNode.children].indexOf(lit) : -1; }})()"


@requires_tool(Path(CHROMIUM).exists(), "Debian's chromium")
@pytest.mark.parametrize("storage_url", ["s3"], indirect=True)
def test_a_finished_job_has_subtitles_timed_to_its_audio_and_a_read_along_page(
    celery_worker_process, web_server, browser
):
    from playwright.sync_api import expect

    _, base = web_server
    status, _, body = http("POST", f"{base}/api/v1/jobs", jpeg())
    assert status == 202
    job_id = json.loads(body)["id"]
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{base}/jobs/{job_id}")  # open while the job runs: the page adds the track itself
    expect(page.locator("#status")).to_have_text("Done: your story is ready.", timeout=60_000)

    job = json.loads(http("GET", f"{base}/api/v1/jobs/{job_id}")[2])
    assert job["status"] == "succeeded" and job["subtitles_url"] == f"{base}/api/v1/jobs/{job_id}/subtitles.vtt"
    status, headers, vtt = http("GET", job["subtitles_url"])
    assert status == 200 and headers["Content-Type"] == "text/vtt; charset=utf-8"
    cues = parse_vtt(vtt.decode())
    written = job["story"].split()
    spoken = [word for _, _, _, text in cues for word in text.split()]
    assert spoken == normalize_text(job["story"]).split() and len(cues) >= 5
    ids = [int(cue_id[1:]) for cue_id, *_ in cues]
    assert ids == sorted(set(ids)) and ids[-1] < len(written)
    for (_, start, end, _), (_, after, _, _) in zip(cues, cues[1:] + [("", 1e9, 0, "")], strict=True):
        assert 0 <= start < end <= after
    assert abs(cues[-1][2] - job["audio_seconds"]) < 0.3
    audio_status, _, mp3 = http("GET", job["audio_url"])  # a redirect to the presigned S3 URL
    assert audio_status == 200 and abs(cues[-1][2] - decoded_seconds(mp3)) < 0.3

    def check_read_along(page, play: bool):
        """Seeking lights the cue's written word; playing moves the light forward through the story."""
        until(page, "document.getElementById('audio').textTracks[0].cues?.length > 0")
        assert page.locator("#story span").count() == len(written)
        cue_id, start, end, _ = cues[len(cues) // 2]
        page.evaluate(f"document.getElementById('audio').currentTime = {(start + end) / 2}")
        until(page, f"{LIT_INDEX} === {int(cue_id[1:])}", 5)
        assert page.locator("#story .speaking").text_content() == written[int(cue_id[1:])]
        if not play:
            return
        page.evaluate(
            """() => { const audio = document.getElementById('audio');
            window.lit = []; audio.muted = true; audio.currentTime = 0; audio.playbackRate = 2;
            audio.textTracks[0].addEventListener('cuechange', function () {
                if (this.activeCues.length) window.lit.push(LIT_INDEX); });
            return audio.play(); }""".replace("LIT_INDEX", LIT_INDEX)
        )
        until(page, "document.getElementById('audio').ended", 20)
        seen = [i for i in page.evaluate("window.lit") if i >= 0]
        assert len(set(seen)) >= 3 and seen == sorted(seen) and set(seen) <= set(ids), seen

    check_read_along(page, play=True)
    page.reload()  # a finished job's page comes with its <track>
    assert (
        page.locator("#audio track[kind=captions][default]").get_attribute("src")
        == f"/api/v1/jobs/{job_id}/subtitles.vtt"
    )
    check_read_along(page, play=False)
    assert problems == []
    page.close()
