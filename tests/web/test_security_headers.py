"""Headers that keep one caller's answers to that caller, and no answer built from the Host header."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.settings import Settings
from tests.support.env import GENEROUS_RATE_LIMIT, TEST_SECRET_KEY
from web.app import create_app


@pytest.fixture
def client(redis_url, tmp_path):
    app = create_app(
        Settings(
            redis_url=redis_url,
            storage_url=f"file://{tmp_path}/data",
            secret_key=TEST_SECRET_KEY,
            submit_rate_limit=GENEROUS_RATE_LIMIT,
            read_rate_limit=GENEROUS_RATE_LIMIT,
        )
    )
    yield app.test_client()
    app.extensions["narrator"].celery.close()


def submit(client) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "teal").save(buf, "PNG")
    response = client.post("/api/v1/jobs", data={"image": (io.BytesIO(buf.getvalue()), "teal.png")})
    assert response.status_code == 202, response.json
    return response.json


@pytest.mark.parametrize("path", ["//x", "/jobs//x", "/api/v1//jobs", "/api/v1/jobs//x"])
def test_a_doubled_slash_never_redirects_to_the_host_the_request_named(client, path):
    # PATH_INFO as a server passes it (the test client would read a leading "//x" as a host name)
    response = client.get("/", headers={"Host": "evil.example"}, environ_overrides={"PATH_INFO": path})
    assert response.status_code in (400, 404) and "Location" not in response.headers


def test_per_caller_answers_are_private_and_vary_by_caller(client):
    job = submit(client)
    for path in (f"/api/v1/jobs/{job['id']}", f"/jobs/{job['id']}", "/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "private, no-store", path
        assert {"Authorization", "Cookie"} <= set(response.vary), path


def test_answers_the_same_for_everyone_stay_cacheable(client):
    for path in ("/api/v1/openapi.json", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200 and "no-store" not in response.headers.get("Cache-Control", ""), path


def test_the_pages_csp_allows_forms_to_post_only_here(client):
    csp = client.get("/").headers["Content-Security-Policy"]
    assert "form-action 'self'" in csp


def test_the_uploaded_photo_is_served_as_a_download_in_a_sandbox(client):
    job = submit(client)
    response = client.get(f"/api/v1/jobs/{job['id']}/image")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["Content-Security-Policy"].startswith("sandbox")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_readyz_tells_the_model_error_s_text_only_to_the_operator(redis_url, tmp_path):
    from shared.jobs.workers import record_model_error

    app = create_app(
        Settings(
            redis_url=redis_url,
            storage_url=f"file://{tmp_path}/data",
            secret_key=TEST_SECRET_KEY,
            metrics_token="operator-token",
        )
    )
    client = app.test_client()
    record_model_error(app.extensions["narrator"].redis, "gpu-3:42", "s3://private-bucket/adapter is unreachable")
    public = client.get("/readyz").json["last_model_error"]
    assert public["at"] and "private-bucket" not in public["message"]
    wrong = client.get("/readyz", headers={"Authorization": "Bearer nope"}).json["last_model_error"]
    assert "private-bucket" not in wrong["message"]
    operator = client.get("/readyz", headers={"Authorization": "Bearer operator-token"}).json["last_model_error"]
    assert operator["message"] == "s3://private-bucket/adapter is unreachable"
    app.extensions["narrator"].celery.close()


def test_over_https_the_session_cookie_is_secure_and_host_only(client):
    page = client.post(
        "/jobs",
        base_url="https://localhost",
        headers={"Origin": "https://localhost"},
        data={"image": (io.BytesIO(photo_bytes()), "teal.png")},
    )
    assert page.status_code == 303, page.get_data(as_text=True)[:300]
    cookie = client.get_cookie("__Host-narrator_session", domain="localhost")
    assert cookie is not None and cookie.secure and cookie.path == "/" and not cookie.domain.startswith(".")
    assert client.get_cookie("narrator_session", domain="localhost") is None
    # Over plain http (a local `make up`) the cookie keeps its plain name: browsers drop __Host- there.
    local = client.post(
        "/jobs", headers={"Origin": "http://localhost"}, data={"image": (io.BytesIO(photo_bytes()), "t.png")}
    )
    assert local.status_code == 303 and client.get_cookie("narrator_session", domain="localhost") is not None


def photo_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "teal").save(buf, "PNG")
    return buf.getvalue()


def app_with(redis_url, tmp_path, **settings):
    return create_app(
        Settings(redis_url=redis_url, storage_url=f"file://{tmp_path}/data", secret_key=TEST_SECRET_KEY, **settings)
    )


@pytest.mark.parametrize(
    "settings, trusted, refused",
    [
        ({}, ["localhost", "127.0.0.1:8000"], ["evil.example", "10.0.0.5:8000"]),
        ({"bind": "10.0.0.5"}, ["10.0.0.5:8000", "localhost"], ["evil.example"]),
        ({"public_base_url": "https://stories.example"}, ["stories.example", "localhost"], ["evil.example"]),
        ({"trusted_hosts": "a.example, b.example"}, ["b.example:8443", "127.0.0.1"], ["stories.example"]),
        ({"trusted_hosts": "*"}, ["evil.example", "localhost"], []),
        ({"bind": "[fd00::5]"}, ["[fd00::5]:8000", "[::1]:8000", "[0:0::1]"], ["[fd00::6]:8000", "[fd00::5"]),
        ({"trusted_hosts": "2001:db8::1, a.example"}, ["[2001:DB8:0::1]", "a.example"], ["[2001:db8::2]", "b.example"]),
    ],
)
def test_only_expected_host_names_are_answered(redis_url, tmp_path, settings, trusted, refused):
    app = app_with(redis_url, tmp_path, **settings)
    client = app.test_client()
    for host in trusted:
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    for host in refused:  # a rebinding page under a foreign name gets nothing of ours
        response = client.get("/", headers={"Host": host})
        assert response.status_code == 400 and host.split(":")[0] not in response.get_data(as_text=True), host
    app.extensions["narrator"].celery.close()
