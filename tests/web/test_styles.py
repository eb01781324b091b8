"""Story styles through the real service: STORY_STYLES with two LoRA adapters on the tiny story model,
the web app on a real HTTP server, a real Celery worker that runs jobs of both styles in one batch."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

from shared.settings import Settings
from shared.styles import parse_styles
from tests.support.env import TEST_SECRET_KEY
from tests.support.http import http
from tests.support.photos import photo
from web.app import create_app
from worker.tiny_models import adapter as tiny_adapter


def jpeg() -> bytes:
    return photo("orange")


@pytest.fixture(scope="module")
def style_adapters(tiny_models_dir, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("styles")
    return {
        "bedtime": str(tiny_adapter.build(tiny_models_dir / "story", out / "bedtime", seed=1)),
        "adventure": str(tiny_adapter.build(tiny_models_dir / "story", out / "adventure", seed=2, rank=8)),
    }


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"file://{tmp_path}/data"  # local storage only: S3 has nothing to do with styles


@pytest.fixture
def service_env(service_env, style_adapters):
    """Two styles, adventure the default. A near-zero temperature and top_p make the worker's sampling
    pick the most likely token, so each story can be checked against its adapter's greedy story."""
    return {
        **service_env,
        "STORY_STYLES": ",".join(f"{k}={v}" for k, v in style_adapters.items()),
        "STORY_DEFAULT_STYLE": "adventure",
        "STORY_TEMPERATURE": "0.01",
        "STORY_TOP_P": "0.01",
    }


@pytest.mark.process  # its worker starts mid-test (request.getfixturevalue)
def test_jobs_of_both_styles_share_one_batch_and_each_gets_its_own_adapter(
    web_server, service_env, request, tiny_models_dir, style_adapters
):
    app, base = web_server
    status, body = http("GET", f"{base}/api/v1/styles")
    assert status == 200
    assert json.loads(body) == [{"name": "bedtime", "default": False}, {"name": "adventure", "default": True}]
    status, body = http("GET", f"{base}/readyz")
    story = {"adapter": False, "styles": ["bedtime", "adventure"], "default_style": "adventure"}
    assert json.loads(body)["story"] == story  # what the workers serve, said where operators look

    # Refused before anything is stored: the API and the form.
    status, body = http("POST", f"{base}/api/v1/jobs", {"style": "poetry"}, jpeg())
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_style"
    assert "bedtime, adventure" in json.loads(body)["error"]["message"]
    status, body = http("POST", f"{base}/jobs", {"style": "poetry"}, jpeg(), {"Origin": base})
    assert status == 400 and "must be one of bedtime, adventure" in body.decode()
    assert re.search(r'<option value="poetry"', body.decode()) is None
    status, body = http("GET", f"{base}/")
    select = re.search(r'<select id="style" name="style">(.*?)</select>', body.decode(), re.S).group(1)
    assert re.findall(r'<option value="(\w+)"( selected)?', select) == [("bedtime", ""), ("adventure", " selected")]

    # Queued while no worker runs, so the worker's first claim takes them all as one batch.
    asked = ["bedtime", "adventure", None, "bedtime"]
    ids = []
    for style in asked:
        status, body = http("POST", f"{base}/api/v1/jobs", {"style": style} if style else {}, jpeg())
        assert status == 202, body
        ids.append(json.loads(body)["id"])
        assert json.loads(body)["style"] == (style or "adventure")
    request.getfixturevalue("celery_worker_process")
    deadline, jobs = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        jobs = [json.loads(http("GET", f"{base}/api/v1/jobs/{job_id}")[1]) for job_id in ids]
        if all(job["status"] in ("succeeded", "failed") for job in jobs):
            break
        time.sleep(0.3)
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    assert [job["style"] for job in jobs] == ["bedtime", "adventure", "adventure", "bedtime"]
    store = app.extensions["narrator"].jobs
    assert {store.get(job_id).batch_size for job_id in ids} == {4}  # one run held all four

    from worker.engine.story import StoryStage

    stage = StoryStage(str(tiny_models_dir / "story"), styles=style_adapters, device="cpu").load()
    caption, words = jobs[0]["caption"], jobs[0]["words"]
    assert all(job["caption"] == caption for job in jobs)  # one photo: every row the same prompt
    stories = stage([caption] * 2, words=words, styles=list(stage.styles), do_sample=False)
    own = dict(zip(stage.styles, stories, strict=True))
    assert own["bedtime"] != own["adventure"]
    assert [job["story"] for job in jobs] == [own[job["style"]] for job in jobs]


def _app(redis_url, tmp_path, **values):
    return create_app(
        Settings(redis_url=redis_url, storage_url=f"file://{tmp_path}/data", secret_key=TEST_SECRET_KEY, **values)
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"story_styles": "bedtime"}, "'bedtime' is not name=location"),
        ({"story_styles": "a=x,b=y", "story_default_style": "c"}, "STORY_DEFAULT_STYLE='c' is not one of"),
    ],
)
def test_bad_styles_stop_the_web_app_at_start(redis_url, tmp_path, values, message):
    with pytest.raises(RuntimeError, match=message):
        _app(redis_url, tmp_path, **values)


def test_without_styles_the_list_is_empty_and_a_style_is_refused(redis_url, tmp_path):
    app = _app(redis_url, tmp_path)
    try:
        client = app.test_client()
        assert client.get("/api/v1/styles").get_json() == []
        assert client.get("/readyz").get_json()["story"] == {"adapter": False, "styles": [], "default_style": None}
        assert 'name="style"' not in client.get("/").get_data(as_text=True)
        photo = {"image": (io.BytesIO(jpeg()), "p.jpg")}
        response = client.post("/api/v1/jobs", data={**photo, "style": "bedtime"})
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_style"
        response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(jpeg()), "p.jpg"), "style": " "})
        assert response.status_code == 202 and response.get_json()["style"] is None
    finally:
        app.extensions["narrator"].celery.close()


def test_the_default_style_is_the_first_unless_named():
    assert parse_styles("b=x, a = y ,").default == "b"
    styles = parse_styles("b=x,a=y", " a ")
    assert styles.default == "a" and styles.locations == {"b": "x", "a": "y"}
    assert styles.resolve(None) == styles.resolve(" ") == "a" and styles.resolve("b") == "b"
    assert parse_styles("", "").default is None
