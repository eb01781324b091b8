"""narrator_client against the running service: the library calls and their typed errors."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from narrator_client import Client, JobFailed, NotFound, RateLimited
from narrator_client.errors import ApiError
from tests.support.audio import is_mp3
from tests.support.env import ROOT
from tests.support.keys import create_api_key
from tests.support.photos import photo


def test_submit_wait_download_list_and_cancel(service_env, web_server, celery_worker_process, tmp_path):
    _, base = web_server
    client = Client(base, api_key=create_api_key(service_env, "client-test"))
    updates = []
    jobs = [client.submit(photo((i * 60, 90, 30)), words=12, seed=i, filename=f"p{i}.jpg") for i in range(3)]
    assert all(job.status == "queued" for job in jobs)
    done = [client.wait(job.id, timeout=60, on_update=updates.append) for job in jobs]
    assert all(job.status == "succeeded" and job.story for job in done)
    assert updates[-1].status == "succeeded"
    # The audio redirects to presigned S3 (moto, another host): the bytes arrive, the key stays home.
    path = client.download(done[0].id, tmp_path / "story.mp3")
    assert is_mp3(path.read_bytes())
    # Pages of 2 are followed to the end: all three, newest first.
    assert [job.id for job in client.jobs(page_size=2)] == [job.id for job in reversed(jobs)]
    with pytest.raises(ApiError) as finished:
        client.cancel(done[1].id)
    assert finished.value.status == 409 and finished.value.code == "already_finished"
    with pytest.raises(NotFound) as missing:
        client.get("no-such-job")
    assert missing.value.code == "not_found"
    with pytest.raises(ApiError) as invalid:
        client.submit(photo(), words=5)
    assert invalid.value.status == 400 and invalid.value.code == "invalid_words"


def test_wait_raises_job_failed_for_a_canceled_job(service_env, web_server):
    _, base = web_server
    client = Client(base)  # no worker runs: the job stays queued until canceled
    job = client.submit(photo())
    assert client.cancel(job.id).status == "canceled"
    with pytest.raises(JobFailed) as ended:
        client.wait(job.id, timeout=10)
    assert ended.value.job.status == "canceled" and ended.value.code == "job_canceled"
    # ...which it may run again, or erase.
    again = client.retry(job.id)
    assert again.retry_of == job.id and again.status == "queued" and again.id != job.id
    with pytest.raises(ApiError) as refused:
        client.retry(again.id)  # queued: nothing to retry
    assert refused.value.code == "not_retryable"
    client.delete(job.id)
    with pytest.raises(NotFound):
        client.get(job.id)
    with pytest.raises(NotFound):
        client.delete(job.id)


@pytest.fixture
def slow_reads(service_env):
    service_env["READ_RATE_LIMIT"] = "1 per 2 seconds"


def test_wait_honours_retry_after(slow_reads, service_env, web_server, celery_worker_process, tmp_path):
    _, base = web_server
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        time.sleep(seconds)

    client = Client(base, sleep=sleep)
    job = client.submit(photo())
    # Polls back to back: one uses up its 2-second window and the next in that window is refused (two
    # may straddle a window's end on a busy machine, so poll until one is).
    deadline = time.monotonic() + 10
    while True:
        try:
            client.get(job.id)
        except RateLimited as exc:
            limited = exc
            break
        assert time.monotonic() < deadline, "polls back to back were never refused at 1 per 2 seconds"
    retry_after = limited.retry_after
    assert limited.code == "rate_limited" and retry_after and retry_after >= 1
    assert client.wait(job.id, timeout=60).status == "succeeded"
    # Its first poll was refused too, and it waited what Retry-After asked, not its own 0.25 s.
    assert slept and slept[0] >= retry_after - 0.5, slept
    # The download right after the last poll is refused as well, and retried after Retry-After.
    waits = len(slept)
    assert is_mp3(client.download(job.id, tmp_path / "story.mp3").read_bytes())
    assert len(slept) == waits + 1 and slept[-1] >= 1, slept
    assert not list(tmp_path.glob(".*.part"))


def test_the_client_needs_no_service_code():
    """A user installs requests and tqdm only: no flask, torch or the service's packages."""
    blocked = ["flask", "torch", "transformers", "celery", "redis", "shared", "web", "worker"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import narrator_client, narrator_client.cli\n"
        "print(narrator_client.Client('http://example.invalid').url)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "http://example.invalid/"
