"""Narration languages through the real service: LANGUAGES with three tiny MMS-TTS voices (English,
German, Hindi with is_uroman), the web app on a real HTTP server, a real Celery worker that runs jobs
of all three languages in one batch, each spoken by its own voice."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from pydub import AudioSegment

from shared.languages import parse_languages
from shared.settings import Settings
from tests.support.env import TEST_SECRET_KEY
from tests.support.http import http
from tests.support.photos import photo
from web.app import create_app
from worker.tiny_models import speech as tiny_speech


@pytest.fixture(scope="module")
def voices(tiny_models_dir, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("voices")
    built = {code: str(tiny_speech.build(out / f"speech-{code}", seed=0, language=code)) for code in ("deu", "hin")}
    return {"eng": str(tiny_models_dir / "speech"), **built}


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"file://{tmp_path}/data"  # local storage only: S3 has nothing to do with languages


@pytest.fixture
def service_env(service_env, voices):
    return {**service_env, "LANGUAGES": ",".join(f"{k}={v}" for k, v in voices.items())}


@pytest.mark.process  # starts its worker once the jobs are queued
def test_jobs_in_three_languages_share_one_batch_and_each_is_spoken(web_server, request):
    app, base = web_server
    status, body = http("GET", f"{base}/api/v1/languages")
    assert status == 200
    assert json.loads(body) == [
        {"code": "eng", "name": "English", "default": True},
        {"code": "deu", "name": "German", "default": False},
        {"code": "hin", "name": "Hindi", "default": False},
    ]

    # Refused before anything is stored: the API and the form.
    status, body = http("POST", f"{base}/api/v1/jobs", {"language": "xxx"}, photo("orange"))
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_language"
    assert "eng, deu, hin" in json.loads(body)["error"]["message"]
    status, body = http("POST", f"{base}/jobs", {"language": "xxx"}, photo("orange"), {"Origin": base})
    assert status == 400 and "must be one of eng, deu, hin" in body.decode()
    status, body = http("GET", f"{base}/")
    select = re.search(r'<select id="language" name="language">(.*?)</select>', body.decode(), re.S).group(1)
    assert re.findall(r'<option value="(\w+)"( selected)?>(\w+)', select) == [
        ("eng", " selected", "English"),
        ("deu", "", "German"),
        ("hin", "", "Hindi"),
    ]

    # Queued while no worker runs, so the worker's first claim takes them all as one batch.
    asked = ["hin", "deu", None, "eng"]
    ids = []
    for language in asked:
        status, body = http("POST", f"{base}/api/v1/jobs", {"language": language} if language else {}, photo("orange"))
        assert status == 202, body
        ids.append(json.loads(body)["id"])
        assert json.loads(body)["language"] == (language or "eng")
    request.getfixturevalue("celery_worker_process")
    deadline, jobs = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        jobs = [json.loads(http("GET", f"{base}/api/v1/jobs/{job_id}")[1]) for job_id in ids]
        if all(job["status"] in ("succeeded", "failed") for job in jobs):
            break
        time.sleep(0.3)
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    assert [job["language"] for job in jobs] == ["hin", "deu", "eng", "eng"]
    store = app.extensions["narrator"].jobs
    assert {store.get(job_id).batch_size for job_id in ids} == {4}  # one run held all four
    for job in jobs:
        status, mp3 = http("GET", job["audio_url"])
        assert status == 200 and len(AudioSegment.from_file(io.BytesIO(mp3), format="mp3")) > 0
        status, vtt = http("GET", job["subtitles_url"])
        assert status == 200 and vtt.decode().startswith("WEBVTT")
    status, page = http("GET", f"{base}/jobs/{ids[0]}")
    assert 'Language: <span id="language">Hindi</span>' in page.decode()


def _app(redis_url, tmp_path, **values):
    return create_app(
        Settings(redis_url=redis_url, storage_url=f"file://{tmp_path}/data", secret_key=TEST_SECRET_KEY, **values)
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"languages": "deu"}, "'deu' is not code=location"),
        ({"languages": "German=x"}, "'German' is not an ISO 639-3 code"),
        ({"languages": "eng=a,deu=b", "default_language": "fra"}, "DEFAULT_LANGUAGE='fra' is not one of"),
    ],
)
def test_bad_languages_stop_the_web_app_at_start(redis_url, tmp_path, values, message):
    with pytest.raises(RuntimeError, match=message):
        _app(redis_url, tmp_path, **values)


def test_without_languages_english_is_the_only_one(redis_url, tmp_path):
    app = _app(redis_url, tmp_path)
    try:
        client = app.test_client()
        assert client.get("/api/v1/languages").get_json() == [{"code": "eng", "name": "English", "default": True}]
        assert 'name="language"' not in client.get("/").get_data(as_text=True)  # nothing to choose
        response = client.post(
            "/api/v1/jobs", data={"image": (io.BytesIO(photo("orange")), "p.jpg"), "language": "deu"}
        )
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_language"
        response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(photo("orange")), "p.jpg")})
        assert response.status_code == 202 and response.get_json()["language"] == "eng"
    finally:
        app.extensions["narrator"].celery.close()


def test_parsing_languages():
    languages = parse_languages(" deu = x , hin=y,", " hin ")
    assert languages.default == "hin" and languages.locations == {"deu": "x", "hin": "y"}
    assert languages.resolve(None) == languages.resolve(" ") == "hin" and languages.resolve("deu") == "deu"
    assert parse_languages("kmr-script_latin=z").default == "kmr-script_latin"
    assert parse_languages("", None, "facebook/mms-tts-eng").locations == {"eng": "facebook/mms-tts-eng"}
    with pytest.raises(ValueError, match="twice"):
        parse_languages("deu=x,deu=y")
    with pytest.raises(ValueError, match="LANGUAGES is empty"):
        parse_languages("", "deu")


def test_the_result_cache_keys_on_the_language_and_its_voice():
    from shared import result_cache

    settings = Settings(secret_key="x" * 32, languages="eng=a,deu=b")
    key = result_cache.cache_key(settings, "a" * 64, 40, 7, None, "deu")
    assert key != result_cache.cache_key(settings, "a" * 64, 40, 7, None, "eng")
    moved = settings.model_copy(update={"languages": "eng=a,deu=c"})
    assert key != result_cache.cache_key(moved, "a" * 64, 40, 7, None, "deu")  # another German voice
    added = settings.model_copy(update={"languages": "eng=a,deu=b,hin=d"})
    assert key == result_cache.cache_key(added, "a" * 64, 40, 7, None, "deu")  # another language: still cached
