"""Fault tests with real processes: workers killed (SIGKILL) or stopped (SIGTERM), a poison photo,
a Redis restart (AOF), a storage outage behind a TCP proxy. Each asserts that nothing is lost, nothing
runs twice without need, and how long recovery took; the figures are printed (pytest -s) and quoted
in docs/reliability.md."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
import redis

from shared.jobs import JobStatus, JobStore
from shared.storage import open_storage
from tests.support.env import GENEROUS_RATE_LIMIT, TEST_SECRET_KEY, requires_tool
from tests.support.http import post_job
from tests.support.servers import RedisServer, Supervisor, TcpProxy, Worker

# Every test starts workers. Those that time recovery closely run alone (serial); the others assert
# nothing a busy machine would break, so they run beside the parallel part.
pytestmark = [requires_tool(bool(__import__("shutil").which("redis-server")), "redis-server"), pytest.mark.process]


class Stack:
    """Private Redis (AOF), moto's S3 behind a cuttable proxy, the web app on a real HTTP server."""

    def __init__(self, redis_server: RedisServer, proxy: TcpProxy, storage_url: str, base: str, env: dict, logdir):
        self.redis_server, self.proxy, self.storage_url, self.base, self.env, self.logdir = (
            redis_server,
            proxy,
            storage_url,
            base,
            env,
            logdir,
        )
        self.store = JobStore(redis.Redis.from_url(redis_server.url), 3600)
        self.workers: list[Worker] = []  # killed at teardown, whatever the test did

    @property
    def storage(self):
        return open_storage(self.storage_url)

    def worker(self, name: str, **env) -> Worker:
        worker = Worker({**self.env, **env}, self.logdir, name)
        self.workers.append(worker)
        return worker.wait_ready()

    def wait_all(self, ids, timeout: float) -> dict:
        """Poll until every job has finished; returns {id: Job}."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = {job_id: self.store.get(job_id) for job_id in ids}
            if all(job and job.status.finished for job in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                states = Counter(job.status.value if job else "missing" for job in jobs.values())
                pytest.fail(f"jobs still unfinished after {timeout}s: {dict(states)}")
            time.sleep(0.2)

    def one_mp3_each(self, jobs: dict) -> None:
        keys = self.storage.list("audio/")
        per_job = Counter(key.split("/")[1] for key in keys)
        assert all(per_job[job_id] == 1 for job_id in jobs), {j: per_job[j] for j in jobs if per_job[j] != 1}
        assert {job.audio_key for job in jobs.values()} <= set(keys)


@pytest.fixture
def stack(tmp_path, s3_env, s3_endpoint, tiny_models_dir, monkeypatch):
    from werkzeug.serving import make_server

    from shared.settings import Settings
    from web.app import create_app

    redis_server = RedisServer(tmp_path)
    redis_server.start()
    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    env = {
        "REDIS_URL": redis_server.url,
        "STORAGE_URL": s3_env,
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{proxy.port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "CAPTION_MODEL": str(tiny_models_dir / "caption"),
        "STORY_MODEL": str(tiny_models_dir / "story"),
        "SPEECH_MODEL": str(tiny_models_dir / "speech"),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "DEVICE": "cpu",
        "TEST_FAULT_HOOKS": "1",
    }
    app = create_app(
        Settings(
            redis_url=redis_server.url,
            storage_url=s3_env,
            secret_key=TEST_SECRET_KEY,
            submit_rate_limit=GENEROUS_RATE_LIMIT,
            read_rate_limit=GENEROUS_RATE_LIMIT,
        )
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack = Stack(redis_server, proxy, s3_env, f"http://127.0.0.1:{server.server_port}", env, tmp_path)
    yield stack
    for worker in stack.workers:  # a failed assertion must not leave a worker running
        worker.kill()
    server.shutdown()
    proxy.close()
    redis_server.stop()


def running_on(store: JobStore, ids, pid: int) -> list[str]:
    return [
        job_id
        for job_id in ids
        if (job := store.get(job_id)) and job.status is JobStatus.RUNNING and job.worker and f":{pid}:" in job.worker
    ]


def test_a_killed_worker_s_jobs_finish_on_another_within_a_minute(stack):
    """Default HEARTBEAT_SECONDS and LEASE_SECONDS: SIGKILL mid-batch, every job it held runs again."""
    # Queued before any worker runs, so worker a takes a full batch, the oldest (slow) photo first;
    # the slow photo makes that batch last long enough to be killed in the middle of it.
    ids = [post_job(stack.base, 0, filename="__sleep_30__.jpg")[1]["id"]]
    ids += [post_job(stack.base, i)[1]["id"] for i in range(1, 12)]
    a = stack.worker("a")
    deadline = time.monotonic() + 30
    while not running_on(stack.store, ids[:1], a.pid):
        assert time.monotonic() < deadline, "worker a never took the slow job"
        time.sleep(0.1)
    b = stack.worker("b", TEST_FAULT_HOOKS="0")
    held = running_on(stack.store, ids, a.pid)
    a.kill()
    killed_at = time.time()
    a2 = stack.worker("a2", TEST_FAULT_HOOKS="0")  # the replacement a supervisor would start
    jobs = stack.wait_all(ids, timeout=90)
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs.values()), {j: v.error for j, v in jobs.items()}
    recovery = max(jobs[job_id].finished_at for job_id in held) - killed_at
    print(
        f"\nSIGKILL mid-batch: {len(held)} job(s) held by the dead worker finished {recovery:.1f}s after the kill; "
        f"{len(ids)} jobs, all succeeded"
    )
    assert recovery < 60 and len(held) == 8  # WORKER_BATCH_SIZE
    assert all(jobs[job_id].attempts == 2 for job_id in held)
    assert all(jobs[job_id].attempts == 1 for job_id in ids if job_id not in held)
    stack.one_mp3_each(jobs)
    for worker in (b, a2):
        worker.kill()


def test_only_deaths_alone_count_a_poison_photo_fails_and_its_batch_mates_succeed(stack):
    """MAX_ATTEMPTS=2. One batch: a poison photo, a slow healthy one and two more. The poison kills the
    batch's worker; then each job runs alone. The poison kills its worker twice alone and fails; the
    slow one's worker is killed once while it runs alone, and it still succeeds."""
    stack.env.update({"HEARTBEAT_SECONDS": "0.5", "LEASE_SECONDS": "2", "MAX_ATTEMPTS": "2"})
    poison = post_job(stack.base, 0, filename="__kill_worker__.jpg")[1]["id"]
    slow = post_job(stack.base, 1, filename="__sleep_4__.jpg")[1]["id"]
    ids = [slow, *(post_job(stack.base, i)[1]["id"] for i in range(2, 4))]
    supervisor = Supervisor(stack.env, stack.logdir, count=1)  # started after the submits: one batch of 4
    try:
        deadline = time.monotonic() + 120
        # Alone: claimed alone, and no batch before it still finishing (a rerun waits for that before it
        # runs, and a kill meanwhile would take the finishing job down too).
        others = [poison, *ids[1:]]
        while not (
            (job := stack.store.get(slow)).status is JobStatus.RUNNING
            and job.batch_size == 1
            and not any(stack.store.get(other).status is JobStatus.RUNNING for other in others)
        ):
            assert time.monotonic() < deadline and not job.status.finished, job
            time.sleep(0.05)
        supervisor.workers[0].kill()  # the slow job, running alone, loses its worker
        jobs = stack.wait_all([poison, *ids], timeout=150)
    finally:
        supervisor.stop()
    bad = jobs[poison]
    print(
        f"\npoison photo: failed after {bad.attempts} runs ({bad.lone_deaths} alone), {supervisor.deaths} worker "
        f"deaths, {bad.finished_at - bad.created_at:.1f}s after it was submitted"
    )
    assert bad.status is JobStatus.FAILED and bad.lone_deaths == 2 and bad.attempts == 3, bad
    assert "alone, 2 time(s)" in bad.error
    assert supervisor.deaths == 4  # the batch, the poison alone twice, the slow job alone once
    assert all(jobs[job_id].status is JobStatus.SUCCEEDED for job_id in ids), {j: jobs[j].error for j in ids}
    assert jobs[slow].attempts == 3 and jobs[slow].lone_deaths == 1
    assert all(jobs[job_id].attempts == 2 and jobs[job_id].batch_size == 1 for job_id in ids[1:]), {
        job_id: (jobs[job_id].attempts, jobs[job_id].batch_size, jobs[job_id].lone_deaths) for job_id in ids
    }
    stack.one_mp3_each({job_id: jobs[job_id] for job_id in ids})


def test_a_worker_whose_heartbeat_thread_dies_exits_and_its_job_is_reaped(stack):
    stack.env.update({"HEARTBEAT_SECONDS": "0.5", "LEASE_SECONDS": "2"})
    a = stack.worker("a")
    job_id = post_job(stack.base, 0, filename="__stop_heartbeat____sleep_3__.jpg")[1]["id"]
    assert a.proc.wait(timeout=60) == 70  # EXIT_HEARTBEAT_STOPPED, with the job still held
    assert "heartbeat thread died" in a.log.read_text()
    b = stack.worker("b")
    job = stack.wait_all([job_id], timeout=60)[job_id]
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 2 and b.pid != a.pid
    b.kill()


def test_sigterm_finishes_the_batch_within_the_grace_period(stack):
    worker = stack.worker("a", WORKER_STOP_GRACE="20")
    job_id = post_job(stack.base, 0, filename="__sleep_3__.jpg")[1]["id"]
    while not running_on(stack.store, [job_id], worker.pid):
        time.sleep(0.1)
    worker.terminate()
    stopped = time.time()
    assert worker.proc.wait(timeout=30) == 0
    job = stack.store.get(job_id)
    print(f"\nSIGTERM: the batch finished and the worker exited {time.time() - stopped:.1f}s later")
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1


def test_sigterm_hands_a_long_batch_back_at_once_after_the_grace_period(stack):
    slow = stack.worker("slow", WORKER_STOP_GRACE="1")
    ids = [post_job(stack.base, 0, filename="__sleep_60__.jpg")[1]["id"]]
    while not running_on(stack.store, ids, slow.pid):
        time.sleep(0.1)
    ids += [post_job(stack.base, i)[1]["id"] for i in range(1, 4)]  # queued behind it
    other = stack.worker("other", TEST_FAULT_HOOKS="0")
    slow.terminate()
    stopped = time.time()
    assert slow.proc.wait(timeout=30) == 0
    exited = time.time() - stopped
    jobs = stack.wait_all(ids, timeout=60)
    last = max(job.finished_at for job in jobs.values()) - stopped
    print(
        f"\nSIGTERM past the grace period: the worker exited after {exited:.1f}s; all {len(ids)} jobs "
        f"finished on the other worker {last:.1f}s after the signal (no lease waited out)"
    )
    assert exited < 10
    assert all(job.status is JobStatus.SUCCEEDED and job.attempts == 1 for job in jobs.values())
    assert last < 20  # under one LEASE_SECONDS: the handed-back jobs did not wait for a lease
    stack.one_mp3_each(jobs)
    other.kill()


def wait_until_finishing(worker: Worker, job_id: str, timeout: float = 60) -> None:
    """Until the worker's task has returned with the job's batch finishing in the background (Celery logs
    what the task returned: {job id: outcome})."""
    deadline = time.monotonic() + timeout
    while f"'{job_id}': 'finishing'" not in worker.log.read_text():
        assert worker.alive() and time.monotonic() < deadline, worker.log.read_text()[-3000:]
        time.sleep(0.1)


def test_sigterm_lets_the_batch_finishing_in_the_background_end(stack):
    """The task has handed its batch to the finisher (worker/finisher.py) and returned; the worker is
    idle as Celery sees it. SIGTERM: the worker waits for the finishing batch before it exits."""
    worker = stack.worker("a", WORKER_STOP_GRACE="30")
    job_id = post_job(stack.base, 0, filename="__slow_finish_5__.jpg")[1]["id"]
    wait_until_finishing(worker, job_id)
    assert stack.store.get(job_id).status is JobStatus.RUNNING
    worker.terminate()
    stopped = time.time()
    assert worker.proc.wait(timeout=40) == 0
    exited = time.time()
    job = stack.store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1, job.status
    print(
        f"\nSIGTERM while a batch finishes in the background: it finished {job.finished_at - stopped:.1f}s "
        f"after the signal, the worker exited {exited - stopped:.1f}s after the signal"
    )
    assert stopped < job.finished_at <= exited  # the worker waited for it
    stack.one_mp3_each({job_id: job})


def test_sigterm_hands_back_a_batch_still_finishing_after_the_grace_period(stack):
    slow = stack.worker("slow", WORKER_STOP_GRACE="1")
    job_id = post_job(stack.base, 0, filename="__slow_finish_60__.jpg")[1]["id"]
    wait_until_finishing(slow, job_id)
    other = stack.worker("other", TEST_FAULT_HOOKS="0")
    slow.terminate()
    stopped = time.time()
    assert slow.proc.wait(timeout=30) == 0
    exited = time.time() - stopped
    jobs = stack.wait_all([job_id], timeout=60)
    job = jobs[job_id]
    print(
        f"\nSIGTERM past the grace period with a batch finishing: the worker exited after {exited:.1f}s; "
        f"the job finished on the other worker {job.finished_at - stopped:.1f}s after the signal"
    )
    assert exited < 10
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1  # handed back, not reaped
    assert job.finished_at - stopped < 20  # under one LEASE_SECONDS: no lease waited out
    stack.one_mp3_each(jobs)
    other.kill()


@pytest.mark.serial
def test_a_worker_takes_jobs_within_a_second_of_redis_coming_back(stack):
    worker = stack.worker("a")
    stack.redis_server.stop()
    time.sleep(7)  # kombu's default backoff would have grown to 6 s between tries by now
    stack.redis_server.start()
    deadline = time.monotonic() + 30
    while (reply := post_job(stack.base, 1))[0] != 202:  # the web app reconnects on its own
        assert time.monotonic() < deadline, reply
        time.sleep(0.05)
    job_id = reply[1]["id"]
    while (job := stack.store.get(job_id)).started_at is None:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    pickup = job.started_at - job.created_at
    print(f"\nRedis back after 7 s down: the first job was taken {pickup:.2f} s after it was submitted")
    assert pickup < 1.5, pickup
    worker.kill()


@pytest.mark.serial
def test_a_redis_restart_loses_nothing(stack):
    workers = [stack.worker("a"), stack.worker("b")]
    accepted, refused, errors = [], Counter(), []
    stop = threading.Event()

    def submit_continuously():
        index = 0
        while not stop.is_set():
            index += 1
            started = time.monotonic()
            try:
                status, body = post_job(stack.base, index, timeout=10)
            except Exception as exc:  # a hang or a dropped connection is a failure of the test
                errors.append(repr(exc))
                continue
            took = time.monotonic() - started
            if status == 202:
                accepted.append(body["id"])
            else:
                refused[(status, body["error"]["code"])] += 1
                if took > 5:
                    errors.append(f"{status} after {took:.1f}s")
            time.sleep(0.05)

    thread = threading.Thread(target=submit_continuously)
    thread.start()
    time.sleep(4)
    stack.redis_server.stop()
    down = time.time()
    time.sleep(4)
    polls = []
    for _ in range(3):  # a client polling a job during the outage
        started = time.monotonic()
        try:
            urllib.request.urlopen(f"{stack.base}/api/v1/jobs/{accepted[0]}", timeout=10)
            polls.append((200, time.monotonic() - started))
        except urllib.error.HTTPError as exc:
            polls.append((exc.code, time.monotonic() - started))
    stack.redis_server.start()
    print(f"\nRedis down for {time.time() - down:.1f}s")
    time.sleep(4)
    stop.set()
    thread.join()
    jobs = stack.wait_all(accepted, timeout=120)
    statuses = Counter(job.status.value for job in jobs.values())
    print(
        f"Redis restart: {len(accepted)} accepted, {dict(statuses)}; refused while down: {dict(refused)}; "
        f"polls while down: {[(code, round(t, 2)) for code, t in polls]}"
    )
    assert not errors, errors
    assert all(code == 503 and took < 5 for code, took in polls)
    assert set(refused) <= {(503, "redis_unavailable"), (503, "queue_unavailable")} and refused
    assert statuses == {"succeeded": len(accepted)}
    stack.one_mp3_each(jobs)
    assert all(worker.alive() for worker in workers)  # they reconnected by themselves
    for worker in workers:
        worker.kill()


def test_a_storage_outage_delays_jobs_but_loses_none(stack):
    worker = stack.worker("a", WORKER_BATCH_SIZE="4")
    ids = [post_job(stack.base, i)[1]["id"] for i in range(8)]
    stack.proxy.cut()
    cut_at = time.monotonic()
    started = time.monotonic()
    status, body = post_job(stack.base, 99)
    refused_in = time.monotonic() - started
    time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
    stack.proxy.restore()
    jobs = stack.wait_all(ids, timeout=120)
    print(
        f"\nstorage cut for 10s: a submit got {status} in {refused_in:.2f}s; "
        f"{Counter(j.status.value for j in jobs.values())}, attempts {Counter(j.attempts for j in jobs.values())}"
    )
    assert status == 503 and body["error"]["code"] == "storage_unavailable" and refused_in < 15
    assert all(job.status is JobStatus.SUCCEEDED and job.attempts == 1 for job in jobs.values())
    stack.one_mp3_each(jobs)
    worker.kill()
