"""Deadlines with a real worker: a job no worker started in time never runs, its neighbour does."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image

from shared.jobs import JobStatus

pytestmark = pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # storage is not the subject


def photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), "olive").save(buf, "JPEG")
    return buf.getvalue()


def submit(base: str, **fields) -> dict:
    files = {"image": ("p.jpg", photo(), "image/jpeg")}
    response = requests.post(f"{base}/api/v1/jobs", files=files, data=fields, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


@pytest.mark.process  # starts its worker late, through getfixturevalue
def test_a_job_not_started_before_its_deadline_never_runs(web_server, request):
    app, base = web_server
    store = app.extensions["narrator"].jobs
    late = submit(base, deadline="1")
    assert late["deadline_at"] and late["status"] == "queued"
    timely = submit(base)  # no deadline
    time.sleep(1.5)  # no worker yet: the deadline passes in the queue
    request.getfixturevalue("celery_worker_process")
    deadline = time.monotonic() + 90
    while not ((done := store.get(timely["id"])) and done.status.finished):
        assert time.monotonic() < deadline, done
        time.sleep(0.2)
    assert done.status is JobStatus.SUCCEEDED
    expired = store.get(late["id"])
    assert expired.status is JobStatus.FAILED and expired.error.startswith("expired")
    assert expired.started_at is None and expired.runs == 0  # never ran
    shown = requests.get(f"{base}/api/v1/jobs/{late['id']}", timeout=10).json()
    assert shown["status"] == "failed" and shown["error"].startswith("expired")


@pytest.mark.parametrize("value", ["0", "86401", "soon"])
def test_a_deadline_outside_a_second_to_a_day_is_refused(web_server, value):
    _, base = web_server
    files = {"image": ("p.jpg", photo(), "image/jpeg")}
    response = requests.post(f"{base}/api/v1/jobs", files=files, data={"deadline": value}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_deadline"
