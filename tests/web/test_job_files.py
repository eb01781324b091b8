"""Erasing a job (DELETE, the page's Delete button) and retrying one, with a real worker and S3 over HTTP."""

from __future__ import annotations

import time

import pytest
import requests

from shared import result_cache
from shared.jobs import JobStatus
from shared.storage import open_storage
from tests.support.keys import create_api_key
from tests.support.photos import photo

pytestmark = pytest.mark.process


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def submit(base: str, headers=None, **fields) -> dict:
    files = {"image": ("p.jpg", photo(), "image/jpeg")}
    response = requests.post(f"{base}/api/v1/jobs", files=files, data=fields, headers=headers or {}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def finished(store, job_id: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not ((job := store.get(job_id)) and job.status.finished):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@pytest.mark.parametrize("storage_url", ["s3"], indirect=True)  # "the bucket holds no object of that job"
def test_delete_erases_the_photo_every_run_s_files_the_cache_entry_and_the_record(
    web_server, celery_worker_process, service_env
):
    app, base = web_server
    svc = app.extensions["narrator"]
    alice, bob = create_api_key(service_env, "alice"), create_api_key(service_env, "bob")
    job = finished(svc.jobs, submit(base, bearer(alice), seed="7")["id"])
    assert job.status is JobStatus.SUCCEEDED, job.error
    storage = open_storage(service_env["STORAGE_URL"])
    mine = [key for key in storage.list() if job.id in key]
    assert len(mine) == 3  # the photo, the MP3, the subtitles
    storage.put(f"audio/{job.id}/lost-run.mp3", b"a run that died after uploading left this")
    cache_key = result_cache.job_key(svc.settings, job)
    assert result_cache.lookup(svc.redis, cache_key)["audio_key"] == job.audio_key

    url = f"{base}/api/v1/jobs/{job.id}"
    assert requests.delete(url, headers=bearer(bob), timeout=10).status_code == 404  # not bob's
    assert requests.delete(url, timeout=10).status_code == 404  # nor anyone's without the key
    erased = requests.delete(url, headers=bearer(alice), timeout=10)
    assert erased.status_code == 204 and erased.content == b""
    assert [key for key in storage.list() if job.id in key] == []
    assert result_cache.lookup(svc.redis, cache_key) is None and svc.jobs.get(job.id) is None
    for path in ("", "/audio", "/image", "/subtitles.vtt"):
        assert requests.get(url + path, headers=bearer(alice), timeout=10).status_code == 404, path
    assert requests.delete(url, headers=bearer(alice), timeout=10).status_code == 404  # again: harmless
    assert job.id not in [j["id"] for j in requests.get(f"{base}/api/v1/jobs", headers=bearer(alice)).json()["jobs"]]


@pytest.mark.parametrize("storage_url", ["local"], indirect=True)
def test_a_failed_job_retried_succeeds_from_the_same_photo(web_server, service_env, request):
    app, base = web_server
    svc = app.extensions["narrator"]
    key = create_api_key(service_env, "carol")
    old = submit(base, bearer(key), words="12", seed="3", deadline="1")
    time.sleep(1.3)  # no worker yet: it will expire, a job that failed without running
    request.getfixturevalue("celery_worker_process")
    failed = finished(svc.jobs, old["id"])
    assert failed.status is JobStatus.FAILED and failed.error.startswith("expired")

    url = f"{base}/api/v1/jobs/{old['id']}/retry"
    assert requests.post(url, headers=bearer(create_api_key(service_env, "dan")), timeout=10).status_code == 404
    response = requests.post(url, headers=bearer(key), timeout=10)
    assert response.status_code == 202, response.text
    new = response.json()
    assert new["retry_of"] == old["id"] and new["id"] != old["id"] and new["deadline_at"] is None
    assert (new["words"], new["seed"], new["filename"]) == (12, 3, "p.jpg")
    assert response.headers["Location"] == f"/api/v1/jobs/{new['id']}"
    done = finished(svc.jobs, new["id"])
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert svc.storage.get(done.input_key) == svc.storage.get(failed.input_key)  # the same photo, its own copy

    again = requests.post(f"{base}/api/v1/jobs/{new['id']}/retry", headers=bearer(key), timeout=10)
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_retryable"  # it succeeded
