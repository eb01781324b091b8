"""The web app in-process (Flask's test client): settings, the app, a submission, an error's shape."""

from __future__ import annotations

import io

from shared.settings import Settings
from tests.support.env import GENEROUS_RATE_LIMIT, TEST_SECRET_KEY
from tests.support.photos import photo
from web.app import create_app


def make_settings(**values) -> Settings:
    """Settings with the SECRET_KEY the app requires, and rate limits these tests never reach."""
    return Settings(
        **{
            "secret_key": TEST_SECRET_KEY,
            "submit_rate_limit": GENEROUS_RATE_LIMIT,
            "read_rate_limit": GENEROUS_RATE_LIMIT,
            **values,
        }
    )


def png(size=(64, 48), color="teal") -> bytes:
    return photo(color, size, "PNG")


def build(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def submit(client, data=None, **fields):
    form = {"image": (io.BytesIO(png() if data is None else data), "photo.png"), **fields}
    return client.post("/api/v1/jobs", data=form)


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)[:200]
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]


def job_records(client) -> int:
    """How many job records Redis holds (no key lists every job: this scans for them)."""
    return sum(1 for _ in client.scan_iter(match="job:*", count=1000, _type="hash"))
