"""The whole service with real parts: a Celery worker process, Redis, storage (a folder: storage is not
what these tests are about; the storage contract tests, the fault tests and the client's tests run on S3
over HTTP), the web app on a real HTTP server and the tiny models. No eager mode anywhere.

One worker serves the module (its start, models loaded, costs seconds): the tests share its Redis
database and storage, and each looks only at the jobs it made. The readiness test stops its worker, so
it has one of its own."""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydub import AudioSegment

from shared.jobs import Job, new_job_id
from tests.support.fixtures import celery_worker, http_server, make_service_env
from tests.support.photos import photo

CANONICAL = [
    ("queued", None),
    ("running", "caption"),
    ("running", "story"),
    ("running", "speech"),
    ("running", "upload"),
    ("succeeded", None),
]


# One xdist process runs the whole module (make test: --dist loadgroup), so it starts one worker.
pytestmark = pytest.mark.xdist_group("worker-tasks")


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"file://{tmp_path}/data"


@pytest.fixture(scope="module")
def tasks_service(redis_databases, tiny_models_dir, tmp_path_factory) -> Iterator[tuple]:
    """The module's worker and web app on a Redis database of their own; yields (app, base_url)."""
    workdir = tmp_path_factory.mktemp("tasks")
    env = make_service_env(redis_databases(), f"file://{workdir}/data", tiny_models_dir, workdir)
    with celery_worker(env, workdir / "worker.log"), http_server(env) as served:
        yield served


@pytest.fixture
def tasks_worker(tasks_service) -> tuple:
    """(app, base_url) of the module's service, its worker idle: every job of an earlier test ended (a
    test that leaves jobs behind cancels them; the batch in flight then finishes)."""
    app, _ = tasks_service
    jobs = app.extensions["narrator"].jobs
    deadline = time.monotonic() + 120
    while not all(job.status.finished for job in jobs.list(limit=1000)[0]):
        assert time.monotonic() < deadline, "an earlier test's jobs still run after 120 s"
        time.sleep(0.1)
    return tasks_service


def post_job(base: str, image: bytes, **fields) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{base}/api/v1/jobs",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.load(response)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def wait_until_finished(base: str, job_id: str, timeout: float = 120) -> tuple[dict, list]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_json(f"{base}/api/v1/jobs/{job_id}")
        state = (job["status"], job["stage"])
        if not seen or seen[-1] != state:
            seen.append(state)
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job, seen
        time.sleep(0.01)
    pytest.fail(f"job {job_id} did not finish in {timeout}s; states seen: {seen}")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # a plain GET, redirects followed
        return response.read()


def test_a_job_moves_through_its_states_in_order(tasks_worker):
    app, base = tasks_worker
    status, job = post_job(base, photo(1), words=20, seed=4)
    assert status == 202 and job["status"] == "queued"
    job, seen = wait_until_finished(base, job["id"])

    assert job["status"] == "succeeded", job
    assert seen[-1] == ("succeeded", None)
    assert any(status == "running" for status, _ in seen), f"the job was never seen running: {seen}"
    positions = [CANONICAL.index(state) for state in seen]
    assert positions == sorted(positions), f"states out of order: {seen}"
    assert job["caption"] and job["story"] and job["audio_seconds"] > 0
    assert set(job["timings"]) >= {"caption", "story", "speech"}
    assert job["started_at"] and job["finished_at"] >= job["started_at"]

    audio = AudioSegment.from_file(io.BytesIO(fetch(job["audio_url"])), format="mp3")
    assert audio.duration_seconds > 0 and audio.frame_rate == 16000


def test_the_worker_fails_a_bad_image_with_a_clear_error(tasks_worker):
    app, base = tasks_worker
    services = app.extensions["narrator"]
    job_id = new_job_id()
    # The web app refuses such uploads; storage corrupted later must still end as a clear failure.
    services.storage.put(f"inputs/{job_id}", b"GIF89a but not really")
    services.jobs.create(Job(id=job_id, input_key=f"inputs/{job_id}", words=20))
    services.enqueue(job_id)
    job, _ = wait_until_finished(base, job_id)
    assert job["status"] == "failed" and job["error"] and "Traceback" not in job["error"]
    assert job["audio_url"] is None


def test_a_job_canceled_in_the_queue_is_never_run(tasks_worker):
    app, base = tasks_worker
    services = app.extensions["narrator"]
    job_id = new_job_id()
    services.storage.put(f"inputs/{job_id}", photo(2))
    services.jobs.create(Job(id=job_id, input_key=f"inputs/{job_id}", words=20))
    request = urllib.request.Request(f"{base}/api/v1/jobs/{job_id}/cancel", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["status"] == "canceled"
    services.enqueue(job_id)
    # Follow it with a real job: once that one is done, the worker has handled the canceled one.
    _, later = post_job(base, photo(3), words=20)
    assert wait_until_finished(base, later["id"])[0]["status"] == "succeeded"
    job = get_json(f"{base}/api/v1/jobs/{job_id}")
    assert job["status"] == "canceled" and job["started_at"] is None
    assert not services.storage.exists(f"audio/{job_id}.mp3")


def test_fifty_concurrent_submissions_all_succeed(tasks_worker):
    app, base = tasks_worker
    with ThreadPoolExecutor(max_workers=50) as pool:
        submitted = list(pool.map(lambda i: post_job(base, photo(i), words=12, seed=i), range(50)))
    assert [status for status, _ in submitted] == [202] * 50
    ids = [job["id"] for _, job in submitted]
    assert len(set(ids)) == 50

    finished = [wait_until_finished(base, job_id, timeout=300)[0] for job_id in ids]
    assert [job["status"] for job in finished] == ["succeeded"] * 50, [j["error"] for j in finished if j["error"]]
    with ThreadPoolExecutor(max_workers=10) as pool:
        mp3s = list(pool.map(lambda job: fetch(job["audio_url"]), finished))
    assert len({hashlib.sha256(data).hexdigest() for data in mp3s}) == 50
    for data in mp3s[:5]:
        assert AudioSegment.from_file(io.BytesIO(data), format="mp3").duration_seconds > 0
    # Ownerless jobs: the API lists them to nobody; the store lists them, newest first (the module's
    # earlier tests' jobs are older).
    listed, _ = app.extensions["narrator"].jobs.list(limit=50)
    assert {job.id for job in listed} == set(ids)
    # The worker filled batches from the queue (WORKER_BATCH_SIZE, default 8) and every job still
    # ended exactly once, with its own story and audio.
    sizes = [app.extensions["narrator"].jobs.get(job_id).batch_size for job_id in ids]
    assert max(sizes) > 1 and max(sizes) <= 8


def test_readyz_reports_live_workers_the_queue_and_model_errors(celery_worker_process, web_server):
    from shared.jobs.workers import record_model_error

    app, base = web_server
    ready = get_json(f"{base}/readyz")
    assert ready["status"] == "ready" and ready["warnings"] == []
    assert ready["workers"] == {"live": 1, "ready": 1, "busy": 0}
    assert ready["queue"] == {"queued": 0} and ready["last_model_error"] is None
    record_model_error(app.extensions["narrator"].redis, "gpu-3:42", "STORY_MODEL=x cannot be reached")
    shown = get_json(f"{base}/readyz")[
        "last_model_error"
    ]  # its text is the operator's (tests/web/test_security_headers.py)
    assert shown["at"] and "STORY_MODEL" not in shown["message"]

    celery_worker_process.terminate()  # a worker that stops cleanly leaves the list at once
    celery_worker_process.wait(timeout=30)
    gone = get_json(f"{base}/readyz")
    assert gone["workers"]["live"] == 0 and gone["warnings"] == ["no worker is ready: jobs wait in the queue"]


def test_one_owner_s_backlog_delays_another_owner_by_about_one_batch(tasks_worker, request):
    """Owner A queues 100 jobs, then owner B queues 2: B's jobs finish within A's first two batches
    after them (WORKER_BATCH_SIZE 8), not after all 100."""
    app, base = tasks_worker
    services = app.extensions["narrator"]
    data = photo(7)

    def queue(owner: str) -> str:
        job_id = new_job_id()
        services.storage.put(f"inputs/{job_id}", data)
        services.jobs.create(Job(id=job_id, input_key=f"inputs/{job_id}", words=10, owner=owner))
        services.enqueue(job_id)
        return job_id

    a = [queue("key:a") for _ in range(100)]
    b = [queue("key:b") for _ in range(2)]
    request.addfinalizer(lambda: [services.jobs.cancel(job_id) for job_id in a])  # the rest of A's backlog
    deadline = time.monotonic() + 300  # read from the store: the API shows owned jobs to their owner only
    while not all(services.jobs.get(job_id).status.finished for job_id in b) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [services.jobs.get(job_id).status.value for job_id in b] == ["succeeded"] * 2
    b_done_at = max(services.jobs.get(job_id).finished_at for job_id in b)
    a_before = sum(1 for job_id in a if (job := services.jobs.get(job_id)).finished_at and job.finished_at <= b_done_at)
    print(f"\nfair scheduling: {a_before} of owner A's 100 jobs finished before owner B's 2")
    assert a_before <= 16
