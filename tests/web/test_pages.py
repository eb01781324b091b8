"""HTML pages with Flask's test client: the form, its errors, and the job page in each state."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest

from shared.jobs.queue import QUEUE
from shared.settings import Settings
from tests.support.env import GENEROUS_RATE_LIMIT, TEST_SECRET_KEY
from tests.support.photos import photo
from tests.support.web import job_records
from web.app import create_app

SAME_ORIGIN = {"Origin": "http://localhost"}  # what a browser sends with a post from our own page


class Elements(HTMLParser):
    """Collects (tag, attrs) pairs so tests can ask for elements instead of grepping markup."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def find(self, tag, **attrs) -> list[dict]:
        return [a for t, a in self.found if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def png() -> bytes:
    return photo("orange", (40, 30), "PNG")


@pytest.fixture
def app(redis_url, tmp_path):
    app = create_app(
        Settings(
            redis_url=redis_url,
            storage_url=f"file://{tmp_path}/data",
            max_upload_mb=1,
            secret_key=TEST_SECRET_KEY,
            submit_rate_limit=GENEROUS_RATE_LIMIT,
            read_rate_limit=GENEROUS_RATE_LIMIT,
        )
    )
    yield app
    app.extensions["narrator"].celery.close()


@pytest.fixture
def client(app):
    return app.test_client()


def upload(client, data=None, **fields):
    form = {"image": (io.BytesIO(png() if data is None else data), "sunset.png"), **fields}
    return client.post("/jobs", data=form, headers=SAME_ORIGIN)


def test_form_is_labelled_and_posts_multipart(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = Elements(response.get_data(as_text=True))
    form = html.find("form")[0]
    assert form["method"] == "post" and form["action"] == "/jobs" and form["enctype"] == "multipart/form-data"
    file_input = html.find("input", type="file")[0]
    assert file_input["name"] == "image" and file_input["accept"].startswith("image/")
    assert html.find("label", **{"for": file_input["id"]})
    words = html.find("input", name="words")[0]
    assert html.find("label", **{"for": words["id"]}) and words["min"] == "10" and words["max"] == "200"
    assert html.find("button", type="submit")
    assert html.find("meta", name="viewport") and html.find("html", lang="en")


def test_submit_redirects_to_the_job_page(client, redis_url):
    response = upload(client, words="60")
    assert response.status_code == 303
    match = re.fullmatch(r"/jobs/([A-Za-z0-9_-]{22})", response.headers["Location"])
    assert match
    job_id = match.group(1)
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    html = Elements(text)
    img = html.find("img", src=f"/api/v1/jobs/{job_id}/image")[0]
    assert img["alt"].startswith("The photo you uploaded")
    status = html.find("p", id="status")[0]
    assert status["role"] == "status" and status["aria-live"] == "polite"
    assert "Waiting for a worker" in text
    assert html.find("meta", **{"http-equiv": "refresh"})  # works without JavaScript
    assert html.find("script", src="/static/job.js")
    assert html.find("article", id="job")[0]["data-job-url"] == f"/api/v1/jobs/{job_id}"
    assert client.get(f"/api/v1/jobs/{job_id}/image").data == png()


@pytest.mark.parametrize(
    "send, status, message",
    [
        (lambda c: c.post("/jobs", data={}, headers=SAME_ORIGIN), 400, "Choose a photo"),
        (lambda c: upload(c, b"not an image"), 415, "not a readable image"),
        (lambda c: upload(c, words="3"), 400, "from 10 to 200"),
        (lambda c: upload(c, png() + b"\0" * (2 * 1024 * 1024)), 413, "1 MB"),
    ],
)
def test_form_errors_rerender_the_form(app, client, redis_url, send, status, message):
    response = send(client)
    assert response.status_code == status
    text = response.get_data(as_text=True)
    assert message in text and 'role="alert"' in text
    assert Elements(text).find("input", type="file", **{"aria-invalid": "true"})
    import redis

    r = redis.Redis.from_url(redis_url)
    assert r.llen(QUEUE) == 0 and job_records(r) == 0


def test_a_form_error_keeps_the_words_and_a_reloadable_address(app, client):
    text = upload(client, words="7").get_data(as_text=True)
    assert Elements(text).find("input", id="words")[0]["value"] == "7"
    # The address bar now shows /jobs: visiting it again lands on the form, not a 405.
    response = client.get("/jobs")
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200


def test_finished_job_page(app, client):
    job_id = upload(client).headers["Location"].rsplit("/", 1)[1]
    store = app.extensions["narrator"].jobs
    store.claim("test-worker", first=job_id)
    store.progress(job_id, "speech", caption="An orange card.", story="The card glowed at dusk.")
    running = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "Working: reading it aloud" in running
    assert 'class="step done" data-step="story"' in running and 'class="step current" data-step="speech"' in running
    store.succeed(job_id, f"audio/{job_id}.mp3", 2.0)
    text = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    html = Elements(text)
    assert "An orange card." in text and "The card glowed at dusk." in text
    audio_url = f"/api/v1/jobs/{job_id}/audio"  # relative: no PUBLIC_BASE_URL, no trusted proxy
    assert html.find("audio", id="audio")[0]["src"] == audio_url and "controls" in html.find("audio")[0]
    assert html.find("a", id="download")[0]["href"] == audio_url + "?download=1"
    assert not html.find("meta", **{"http-equiv": "refresh"})  # nothing left to wait for
    assert "hidden" in html.find("form", id="cancel")[0]


def test_failed_job_shows_the_error(app, client):
    job_id = upload(client).headers["Location"].rsplit("/", 1)[1]
    app.extensions["narrator"].jobs.fail(job_id, "The story model is not available.")
    text = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "Failed: The story model is not available." in text


def test_cancel_from_the_page(app, client):
    location = upload(client).headers["Location"]
    response = client.post(location + "/cancel", headers={"Referer": "http://localhost" + location})
    assert response.status_code == 303 and response.headers["Location"] == location
    assert "Canceled." in client.get(location).get_data(as_text=True)


def test_unknown_job_page_is_an_html_404(client):
    for bad in ("nope", "x" * 3000):
        response = client.get(f"/jobs/{bad}", headers={"Accept": "text/html"})
        assert response.status_code == 404 and response.mimetype == "text/html"
        assert "No such job" in response.get_data(as_text=True)


def test_static_assets(client):
    assert b"fetch(" in client.get("/static/job.js").data
    assert client.get("/static/style.css").status_code == 200


def test_recent_stories_belong_to_the_session(app, client):
    assert "Your recent stories" not in client.get("/").get_data(as_text=True)
    assert not client.get_cookie("narrator_session")  # no session before the first submit
    first = upload(client).headers["Location"]
    second = upload(client).headers["Location"]
    assert client.get_cookie("narrator_session")
    html = Elements(client.get("/").get_data(as_text=True))
    assert [a["href"] for a in html.find("a") if a["href"].startswith("/jobs/")] == [second, first]
    other = app.test_client()  # another browser
    assert "Your recent stories" not in other.get("/").get_data(as_text=True)
    assert other.get(first, headers={"Accept": "text/html"}).status_code == 404


def test_form_posts_from_other_sites_are_refused(app, client):
    location = upload(client).headers["Location"]
    for headers in (
        {},
        {"Origin": "https://evil.example"},
        {"Referer": "https://evil.example/x"},
        {"Origin": "http://localhost.evil.example"},
    ):
        assert client.post(location + "/cancel", headers=headers).status_code == 403
        form = {"image": (io.BytesIO(png()), "sunset.png")}
        assert client.post("/jobs", data=form, headers=headers).status_code == 403
    assert "Waiting for a worker" in client.get(location).get_data(as_text=True)
    assert app.extensions["narrator"].jobs.queued_count() == 1


def test_the_job_page_names_the_style_and_a_cached_result(app, client, redis_url):
    import redis

    job_id = upload(client).headers["Location"].rsplit("/", 1)[1]
    plain = Elements(client.get(f"/jobs/{job_id}").get_data(as_text=True))
    assert not plain.find("p", id="story-meta")  # no style configured, not cached: nothing to say
    # As a styled job served from the result cache is stored (shared/jobs/schema.py encodes True as "1").
    redis.Redis.from_url(redis_url).hset(f"job:{job_id}", mapping={"style": "bedtime", "cached": "1"})
    text = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    html = Elements(text)
    assert html.find("span", id="style") and 'Style: <span id="style">bedtime</span>' in text
    assert html.find("span", id="cached") and "earlier identical request" in text


def test_the_job_page_deletes_its_job(client, app):
    job_id = upload(client).headers["Location"].rsplit("/", 1)[-1]
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f'action="/jobs/{job_id}/delete"' in page
    assert client.post(f"/jobs/{job_id}/delete").status_code == 403  # no Origin: not from our own page
    response = client.post(f"/jobs/{job_id}/delete", headers=SAME_ORIGIN)
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert app.extensions["narrator"].jobs.get(job_id) is None and client.get(f"/jobs/{job_id}").status_code == 404
    assert app.extensions["narrator"].storage.list(f"inputs/{job_id}") == []
