"""Control-plane benchmark: what a job costs Redis, with no model anywhere (runs on any CPU).

    python -m worker.control_bench [--jobs N] [--workers W] [--batch B] [--polls P] [--json]
        [--gunicorn] [--redis-url URL] [--s3-endpoint URL] [--split-scripts] [--logs DIR]

The real web app, job store and worker lifecycle; only the engine is a stand-in
(worker/noop_engine.py), so what is measured is the control plane: Redis, the broker, storage.
By default it starts a private redis-server on a free port and keeps uploads and MP3s in a
temporary folder (--s3-endpoint: a new bucket on that S3 server, credentials from the usual AWS_*
variables). With --redis-url it uses that Redis as it is: CONFIG RESETSTAT clears its statistics
and every client's commands count, so give it a Redis nothing else uses.

Phases, each measured from CONFIG RESETSTAT to INFO commandstats of that Redis:

1. submit: N jobs POSTed to /api/v1/jobs with an API key (so they have an owner), through the app
   in this process (Flask's test client), or with --gunicorn through gunicorn as `make up` runs it
   (`gunicorn -c web/gunicorn_conf.py "web.app:create_app()"`), over HTTP. No worker runs yet.
2. run: W Celery worker processes, started as `make up` starts them (`celery worker --pool solo`),
   drain the queue. Their app is worker.app with the no-op engine in the worker's context
   (`noop_app` below), so wake-ups, claims, heartbeats, progress writes, finishing and webhooks'
   notify are the real ones. ENCODE_IN_BACKGROUND is on, as on GPU workers (--encode-in-background
   off: as on CPU workers). Nothing polls the API; the bench watches the store until every job is
   final. The figures include the workers' start-up.
3. poll: P GETs of /api/v1/jobs/<id> with the key, for each of a sample of the jobs (the workers
   have stopped); the figures are per poll.

Then a baseline on the same Redis: a plain Celery task with a Redis result backend (N trivial
tasks sent; W plain workers started and the N results fetched), per task.

Per unit (job, poll or task): Redis commands (the calls of every commandstats entry: the commands
scripts call count too, as Redis counts them), and Redis command time in microseconds:

(a) the usec of every commandstats entry added up. It counts the commands a script calls twice:
    under their own names, and again inside the usec of the EVALSHA that ran the script (and a
    MULTI/EXEC block's commands inside EXEC's usec). The table shows the EVALSHA and EXEC usec, so
    what they hold twice can be judged.
(b) top-level only, with --split-scripts: (a) less the usec of the commands scripts called.
    commandstats cannot tell those from the same commands sent by clients (both count under HSET,
    say) and Redis 7 keeps no other tally of them. The slow log can, set to record every command
    (slowlog-log-slower-than 0): each entry holds a command's own duration and its client, "?:0"
    for a script's. That split is exact, but the log's bookkeeping for each command a script calls
    runs inside the script, about a microsecond each here, so EVALSHA's and EXEC's usec, and with
    them (a) and (b), read higher in that mode (an 8-job stage script: some 36 us instead of 25).
    Without the option the slow log stays off and (b) is not given. Neither way tells which
    commands an EXEC ran, so (b) still counts MULTI/EXEC blocks twice.

The bench's own commands are left out: CONFIG, INFO and SLOWLOG by name, and the reads it watches
the store with (counted as its connection sends them) by their calls, at the phase's mean usec per
call of that command.

Then: memory per finished job (used_memory from before the submit to after the run, all jobs
final and the workers gone, over N; less client buffers, the script cache and Redis 7's latency
histograms, one per command used, which a CONFIG RESETSTAT before each reading clears); a job with
P polls (submit + run + P polls) and the jobs/s one Redis core would sustain at that cost (1e6 /
its usec); the run's jobs/s, from the first claim to the last job's end (the job records' times)
and from the workers' start; the baseline per task. Exit status 1, naming them, when any job (or
baseline task) did not succeed.

A script, not a test: the numbers depend on the machine and on what else runs on it. Redis runs
here far below its capacity, each command often on cold caches, so its usec per command (and so
1e6 / usec) is likely on the pessimistic side of what a saturated core would do.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH_CLIENT = "control-bench"  # the name of the bench's own Redis connections: their commands are left out
OWN_COMMANDS = ("config", "info", "slowlog")  # only the bench sends these
SCRIPT_CLIENT = b"?:0"  # the slow log's client address for a command a script called
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
SLOWLOG_MAX_LEN = 1_000_000  # entries one phase may log before (b) is given up (N=200: some 30,000)
GENEROUS_LIMIT = "100000/second"  # the rate limits still count every request, they just never refuse one
TOP = 6
BASELINE_TASK = "control_bench_add"
REDIS_URL_ENV = "CONTROL_BENCH_REDIS_URL"  # how the baseline's workers find the Redis
POLL_SAMPLE = 50  # jobs polled in phase 3
LISTED = 20  # jobs named when some did not succeed


# --- the workers' Celery apps (`celery -A worker.control_bench:noop_app`, `...:baseline_app`) ---------


@functools.cache
def _noop_app():
    """worker.app with the no-op engine in the worker's context: the context builds each part once
    (worker/once.py), so the engine built here is the one every task and the start-up use."""
    from worker.app import app
    from worker.context import get_context
    from worker.noop_engine import NoopEngine

    ctx = get_context()
    engine = ctx._once("engine", lambda: NoopEngine(ctx.settings))
    if not isinstance(engine, NoopEngine):
        raise RuntimeError("the worker context built its engine before the no-op engine could take its place")
    return app


@functools.cache
def _baseline_app(redis_url: str):
    """A plain Celery app: Redis broker and result backend, Celery's defaults otherwise."""
    from celery import Celery

    app = Celery("control-bench-baseline", broker=redis_url, backend=redis_url)
    app.conf.broker_connection_retry_on_startup = True
    app.task(name=BASELINE_TASK)(_add)
    return app


def _add(x: int, y: int) -> int:
    return x + y


def __getattr__(name: str):
    # Built on first use, so that this module (the bench's own process) never imports worker.app or
    # torch; Celery's -A looks the attribute up.
    if name == "noop_app":
        return _noop_app()
    if name == "baseline_app":
        return _baseline_app(os.environ[REDIS_URL_ENV])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- processes ------------------------------------------------------------------------------------


class BenchError(Exception):
    """Something that stops the bench (a process that would not start, an unexpected answer)."""


class Unsucceeded(BenchError):
    """Jobs (or baseline tasks) that did not succeed; `problems` says which and why."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before it answered")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{what} did not answer on port {port} within {timeout:g}s")


def stop_processes(procs: list[subprocess.Popen], timeout: float = 20.0) -> None:
    """SIGTERM to each at once (a second one would make Celery stop cold), then kill what lingers."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server of the bench's own on a free port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("error: redis-server is not installed (apt-get install redis-server), or pass --redis-url")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*command, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_processes([proc])


@contextmanager
def gunicorn_web(env: dict[str, str], log: Path) -> Iterator[str]:
    """The web app as `make up` runs it; its base URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn_conf.py", "web.app:create_app()"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env={**env, "PORT": str(port), "BIND": "127.0.0.1"}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, proc, "gunicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_processes([proc])


class Workers:
    """Celery worker processes, `--pool solo` each, their output in log files."""

    def __init__(self, app: str, count: int, env: dict[str, str], logdir: Path, name: str):
        self.app, self.count, self.env, self.logdir, self.name = app, count, env, logdir, name
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self) -> None:
        for i in range(self.count):
            log = self.logdir / f"{self.name}-{i}.log"
            hostname = f"{self.name}{i}-{uuid.uuid4().hex[:6]}@%h"
            command = [sys.executable, "-m", "celery", "-A", self.app, "worker", "--pool", "solo"]
            with open(log, "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [*command, "--loglevel", "INFO", "--hostname", hostname],
                        cwd=ROOT,
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            self.logs.append(log)

    def check(self) -> None:
        """Raise if a worker has exited (it would never finish its share)."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise BenchError(f"a worker exited with status {proc.returncode}; its log ends:\n{tail}")

    def stop(self) -> None:
        stop_processes(self.procs)


@contextmanager
def running(workers: Workers) -> Iterator[Workers]:
    try:
        workers.start()
        yield workers
    finally:
        workers.stop()


# --- measuring Redis ------------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase's Redis commands, the bench's own left out: {name: (calls, usec)}, and the usec of
    the commands scripts called (None unless --split-scripts)."""

    name: str
    unit: str
    units: int
    seconds: float
    commands: dict[str, tuple[int, int]]
    script_usec: int | None = None

    @property
    def calls(self) -> int:
        return sum(calls for calls, _ in self.commands.values())

    @property
    def usec(self) -> int:
        return sum(usec for _, usec in self.commands.values())

    def usec_of(self, names: tuple[str, ...]) -> int:
        return sum(usec for name, (_, usec) in self.commands.items() if name in names)

    def per_unit(self) -> dict:
        n = max(1, self.units)
        top = sorted(self.commands.items(), key=lambda item: item[1][1], reverse=True)[:TOP]
        return {
            "unit": self.unit,
            "units": self.units,
            "seconds": round(self.seconds, 3),
            "calls": self.calls / n,
            "usec_all": self.usec / n,
            "usec_top_level": None if self.script_usec is None else (self.usec - self.script_usec) / n,
            "usec_scripts": self.usec_of(SCRIPT_COMMANDS) / n,
            "usec_exec": self.usec_of(("exec",)) / n,
            "top": [{"command": name, "calls": calls / n, "usec": usec / n} for name, (calls, usec) in top],
        }


def phase_commands(stats: dict, own: Counter[str]) -> dict[str, tuple[int, int]]:
    """commandstats as {name: (calls, usec)} less the bench's own commands: CONFIG, INFO and SLOWLOG
    entirely; the others (its watching) by their calls, at the phase's mean time per call."""
    commands = {}
    for key, row in stats.items():
        name = key.removeprefix("cmdstat_")
        if name.split("|")[0] in OWN_COMMANDS:
            continue
        calls, usec = int(row["calls"]), int(row["usec"])
        if own[name]:
            usec -= round(usec * min(own[name], calls) / calls)
            calls = max(0, calls - own[name])
        if calls:
            commands[name] = (calls, usec)
    return commands


def script_usec(entries: list[dict]) -> int | None:
    """The time of the commands scripts called, from the slow log entries logged after the bench's
    CONFIG RESETSTAT and before its INFO commandstats (exactly the statistics' span); None if the
    log lost its start."""
    own = [e for e in entries if e.get("client_name") == BENCH_CLIENT.encode()]
    start = [e["id"] for e in own if e["command"].upper().startswith(b"CONFIG RESETSTAT")]
    end = [e["id"] for e in own if e["command"].upper().startswith(b"INFO")]
    if not start or not end or len(entries) >= SLOWLOG_MAX_LEN:
        return None
    first, last = max(start), max(end)
    return sum(e["duration"] for e in entries if first < e["id"] < last and e.get("client_address") == SCRIPT_CLIENT)


class CountingRedis(redis.Redis):
    """A client whose commands are counted here, by name, so that the bench can leave its own out."""

    sent: Counter[str]

    def execute_command(self, *args, **options):
        self.sent[str(args[0]).lower()] += 1
        return super().execute_command(*args, **options)


def counting_redis(redis_url: str) -> CountingRedis:
    client = CountingRedis(connection_pool=redis.ConnectionPool.from_url(redis_url, client_name=BENCH_CLIENT))
    client.auto_close_connection_pool = True  # as Redis.from_url does: close() disconnects its pool
    client.sent = Counter()
    return client


class Meter:
    """The bench's own connection to the measured Redis: CONFIG RESETSTAT and INFO around each
    phase. With `split`, the slow log records every command meanwhile (see the module's docstring)."""

    def __init__(self, redis_url: str, split: bool):
        self.redis = counting_redis(redis_url)
        self.split = split
        self._saved: dict = self.redis.config_get("slowlog-*")
        if split:
            self.redis.config_set("slowlog-max-len", SLOWLOG_MAX_LEN)
            self.redis.config_set("slowlog-log-slower-than", 0)
        self._started = 0.0

    def close(self) -> None:
        for name, value in self._saved.items():
            self.redis.config_set(name, value)
        if self.split:
            self.redis.slowlog_reset()  # its entries hold memory
        self.redis.close()

    def start(self) -> None:
        if self.split:  # the log first: the statistics' reset is then its first entry, the start marker
            self.redis.slowlog_reset()
        self.redis.config_resetstat()
        self.redis.sent.clear()
        self._started = time.monotonic()

    def stop(self, name: str, unit: str, units: int) -> Phase:
        seconds = time.monotonic() - self._started
        own = Counter(self.redis.sent)
        stats = self.redis.info("commandstats")
        phase = Phase(name, unit, units, seconds, phase_commands(stats, own))
        if self.split:
            phase.script_usec = script_usec(self.redis.slowlog_get(-1))
            self.redis.slowlog_reset()  # its entries take memory that the next reading must not count
            if phase.script_usec is None:
                print(f"warning: the slow log overflowed in phase {name}: no top-level figure", file=sys.stderr)
        return phase

    def memory(self) -> int:
        """used_memory less what is not per job: client buffers (connections come and go), the script
        cache, and the statistics themselves (Redis 7 keeps a latency histogram per command used
        since the last CONFIG RESETSTAT, kilobytes each: reset here, so that each reading holds the same)."""
        self.redis.config_resetstat()
        if self.split:
            self.redis.slowlog_reset()  # its entries take memory too
        info = self.redis.info("memory")
        fixed = int(info.get("mem_clients_normal", 0)) + int(info.get("used_memory_scripts", 0))
        return int(info["used_memory"]) - fixed


# --- the web app ----------------------------------------------------------------------------------


def photo() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 60)).save(buf, "JPEG")
    return buf.getvalue()


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class InProcessWeb:
    """create_app() in this process, through Flask's test client."""

    concurrency = 1

    def __init__(self, key: str):
        from web.app import create_app

        self.client = create_app().test_client()
        self.headers = {"Authorization": f"Bearer {key}"}

    def submit(self, image: bytes) -> dict:
        body, content_type = multipart(image)
        response = self.client.post("/api/v1/jobs", data=body, headers={**self.headers, "Content-Type": content_type})
        return answer(response.status_code, response.get_json(silent=True), 202)

    def get(self, job_id: str) -> dict:
        response = self.client.get(f"/api/v1/jobs/{job_id}", headers=self.headers)
        return answer(response.status_code, response.get_json(silent=True), 200)


class HttpWeb:
    """A web server over HTTP, one keep-alive connection per thread."""

    concurrency = 8

    def __init__(self, base_url: str, key: str):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {key}"}
        self._local = threading.local()

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict | None]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def submit(self, image: bytes) -> dict:
        body, content_type = multipart(image)
        return answer(*self._request("POST", "/api/v1/jobs", body, {"Content-Type": content_type}), 202)

    def get(self, job_id: str) -> dict:
        return answer(*self._request("GET", f"/api/v1/jobs/{job_id}"), 200)


def answer(status: int, body: dict | None, expected: int) -> dict:
    if status != expected or body is None:
        raise BenchError(f"the web app answered {status} (expected {expected}): {body}")
    return body


def each(web, action: Callable, items: list) -> list:
    if web.concurrency == 1:
        return [action(item) for item in items]
    with ThreadPoolExecutor(max_workers=web.concurrency) as pool:
        return list(pool.map(action, items))


# --- the phases -----------------------------------------------------------------------------------


class Finals:
    """Waits until every job is final, watching the store: whenever its change feed (a subscriber's
    messages cost Redis no command) has been quiet for a moment, and at least every SWEEP_SECONDS,
    the pending jobs are read in the order they were submitted, up to the first that is not final."""

    QUIET_SECONDS = 0.05
    SWEEP_SECONDS = 1.0

    def __init__(self, redis_client, ttl_seconds: int, job_ids: list[str]):
        from shared.jobs import JobStore

        self.store = JobStore(redis_client, ttl_seconds=ttl_seconds)
        self.pending = list(job_ids)
        self.pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(getattr(JobStore, "CHANGES", "jobs:changed"))

    def close(self) -> None:
        self.pubsub.close()

    def _heard(self) -> bool:
        heard = False
        message = self.pubsub.get_message(timeout=self.QUIET_SECONDS)
        while message is not None:
            heard = True
            message = self.pubsub.get_message(timeout=0)
        return heard

    def _read(self) -> None:
        while self.pending:
            job = self.store.get(self.pending[0])
            if job is not None and not job.status.finished:
                return
            self.pending.pop(0)  # final, or gone (the check afterwards names it)

    def _describe(self) -> list[str]:
        jobs = [(job_id, self.store.get(job_id)) for job_id in self.pending]
        return [f"{job_id}: {job.status.value if job else 'missing'}" for job_id, job in jobs]

    def wait(self, timeout: float, check: Callable[[], None]) -> None:
        deadline = time.monotonic() + timeout
        read, changed = time.monotonic(), False
        while self.pending:
            if time.monotonic() > deadline:
                raise Unsucceeded(f"{len(self.pending)} jobs were not final after {timeout:g}s", self._describe())
            check()
            if self._heard():
                changed = True
            elif changed or time.monotonic() - read >= self.SWEEP_SECONDS:
                self._read()
                read, changed = time.monotonic(), False


def check_jobs(store, storage, job_ids: list[str]) -> list:
    """The jobs' records; raises Unsucceeded naming each job that did not succeed or whose MP3 is
    not in storage."""
    jobs, problems = [], []
    for job_id in job_ids:
        job = store.get(job_id)
        if job is None:
            problems.append(f"{job_id}: missing (expired?)")
        elif job.status.value != "succeeded":
            problems.append(f"{job_id}: {job.status.value} ({job.error})")
        elif not job.audio_key or not storage.exists(job.audio_key):
            problems.append(f"{job_id}: succeeded, but its MP3 is not in storage ({job.audio_key})")
        jobs.append(job)
    if problems:
        raise Unsucceeded(f"{len(problems)} of {len(job_ids)} jobs did not succeed", problems)
    return jobs


@dataclass
class Run:
    phase: Phase
    memory_after: int
    started: float  # time.time() as the workers were started


def run_phase(meter: Meter, workers: Workers, job_ids: list[str], ttl: int, timeout: float) -> Run:
    finals = Finals(meter.redis, ttl, job_ids)  # subscribed before the statistics start
    try:
        meter.start()
        started = time.time()
        with running(workers):
            finals.wait(timeout, workers.check)
            phase = meter.stop("run", "job", len(job_ids))
    finally:
        finals.close()
    memory = meter.memory()  # the workers gone (their connections and presence): what stays per job
    return Run(phase, memory, started)


def baseline(meter: Meter, redis_url: str, workers: Workers, n: int, timeout: float) -> tuple[Phase, Phase, int]:
    """The plain Celery task: N sent, then W workers started and the N results fetched; the memory
    its results take, in bytes: MEMORY USAGE of each result key, since with few tasks the change in
    used_memory is smaller than what the workers' comings and goings move it by."""
    from celery.exceptions import TimeoutError as CeleryTimeout
    from celery.result import ResultSet

    app = _baseline_app(redis_url)
    meter.start()
    sent = [app.send_task(BASELINE_TASK, args=[i, i]) for i in range(n)]
    send = meter.stop("baseline send", "task", n)
    meter.start()
    with running(workers):
        try:
            values = ResultSet(sent, app=app).get(timeout=timeout)
        except CeleryTimeout:
            waiting = [f"{result.id}: {result.state}" for result in sent if not result.ready()]
            raise Unsucceeded(f"{len(waiting)} baseline tasks had no result after {timeout:g}s", waiting) from None
        run = meter.stop("baseline run", "task", n)
    app.close()
    memory = sum(meter.redis.memory_usage(f"celery-task-meta-{result.id}") or 0 for result in sent)
    wrong = [f"task {i}: {value!r} instead of {2 * i}" for i, value in enumerate(values) if value != 2 * i]
    if wrong:
        raise Unsucceeded(f"{len(wrong)} of {n} baseline tasks returned a wrong result", wrong)
    return send, run, memory


# --- the report -----------------------------------------------------------------------------------

FIELDS = ("calls", "usec_all", "usec_top_level", "usec_scripts", "usec_exec")


def rate(usec: float | None) -> float | None:
    return None if not usec else 1e6 / usec


def combined(rows: list[tuple[float, dict]]) -> dict:
    """Weighted sums of per-unit figures (None where any part has none)."""
    out: dict = {}
    for name in FIELDS:
        parts = [(weight, row[name]) for weight, row in rows]
        out[name] = None if any(value is None for _, value in parts) else sum(w * value for w, value in parts)
    return out


@dataclass
class Outcome:
    """What the figures are made of, besides the phases."""

    memory_per_job: float
    drain_seconds: float  # from the first claim to the last job's end (the records' times)
    wall_seconds: float  # from starting the workers to the last job's end
    baseline_memory_per_task: float


def figures(args, phases: dict[str, Phase], outcome: Outcome) -> dict:
    per = {name: phase.per_unit() for name, phase in phases.items()}
    job = combined([(1, per["submit"]), (1, per["run"]), (args.polls, per["poll"])])
    task = combined([(1, per["baseline send"]), (1, per["baseline run"])])
    # The same figures against the plain task measured in this run on the same Redis: on a shared,
    # noisy machine a ratio within one run says more than microseconds (which follow the machine's day).
    for row in (*per.values(), job):
        row["task_multiple"] = row["usec_all"] / task["usec_all"] if task["usec_all"] else None
    return {
        "config": {
            "jobs": args.jobs,
            "workers": args.workers,
            "batch": args.batch,
            "polls": args.polls,
            "polled_jobs": per["poll"]["units"] // args.polls,
            "web": "gunicorn" if args.gunicorn else "in-process",
            "storage": "s3" if args.s3_endpoint else "local",
            "encode_in_background": args.encode_in_background,
            "split_scripts": args.split_scripts,
        },
        "phases": per,
        "memory_per_job_bytes": outcome.memory_per_job,
        "job_with_polls": {
            "polls": args.polls,
            **job,
            "jobs_per_second_per_core_all": rate(job["usec_all"]),
            "jobs_per_second_per_core_top_level": rate(job["usec_top_level"]),
        },
        "run": {
            "jobs_per_second": args.jobs / outcome.drain_seconds if outcome.drain_seconds > 0 else None,
            "drain_seconds": outcome.drain_seconds,
            "wall_seconds": outcome.wall_seconds,
            "jobs_per_second_wall": args.jobs / outcome.wall_seconds if outcome.wall_seconds > 0 else None,
        },
        "baseline": {
            **task,
            "tasks_per_second_per_core_all": rate(task["usec_all"]),
            "tasks_per_second_per_core_top_level": rate(task["usec_top_level"]),
            "memory_per_task_bytes": outcome.baseline_memory_per_task,
        },
        "all_succeeded": True,
    }


def number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def phase_rows(result: dict, split: bool) -> list[str]:
    b = f"{'usec (b)':>11}" if split else ""
    lines = [
        f"{'phase':<15}{'unit':<6}{'calls':>8}{'usec (a)':>11}{b}{'x task':>8}{'EVALSHA':>10}{'EXEC':>9}{'wall s':>9}"
    ]
    for name, row in result["phases"].items():
        b = f"{number(row['usec_top_level']):>11}" if split else ""
        lines.append(
            f"{name:<15}{row['unit']:<6}{number(row['calls']):>8}{number(row['usec_all']):>11}{b}"
            f"{number(row['task_multiple'], 2):>8}{number(row['usec_scripts']):>10}{number(row['usec_exec']):>9}"
            f"{row['seconds']:>9.2f}"
        )
    lines += ["", f"top {TOP} commands by usec (usec per unit, calls per unit in brackets):"]
    for name, row in result["phases"].items():
        top = ", ".join(f"{c['command']} {c['usec']:.1f} ({c['calls']:.2f})" for c in row["top"])
        lines.append(f"  {name + ':':<15}{top}")
    return lines


def usec_text(row: dict, split: bool) -> str:
    top_level = f", {number(row['usec_top_level'])} usec (b)" if split else ""
    return f"{number(row['calls'])} calls, {number(row['usec_all'])} usec (a){top_level}"


def table(result: dict, header: str) -> str:
    split = result["config"]["split_scripts"]
    job, ran, base = result["job_with_polls"], result["run"], result["baseline"]
    polls = job["polls"]
    b_rate = f", {number(job['jobs_per_second_per_core_top_level'], 0)} jobs/s (b)" if split else ""
    return "\n".join(
        [
            header,
            "",
            "Redis per unit: calls (the commands scripts call included); usec (a): all of commandstats' usec"
            + ("; usec (b): (a) less the commands scripts called" if split else ""),
            "(EVALSHA's and EXEC's usec, part of it, count the time of the commands they ran once more);"
            " x task: usec (a) over a plain Celery task's (the baseline below, send + run)",
            *phase_rows(result, split),
            "",
            f"memory per finished job: {number(result['memory_per_job_bytes'], 0)} bytes "
            "(used_memory from before the submit to the end of the run; client buffers, scripts, statistics left out)",
            f"a job with {polls} polls (submit + run + {polls} polls): {usec_text(job, split)}, "
            f"{number(job['task_multiple'], 2)} x a plain task",
            f"  one Redis core at that cost: {number(job['jobs_per_second_per_core_all'], 0)} jobs/s (a){b_rate}",
            f"run: {number(ran['jobs_per_second'])} jobs/s from the first claim to the last job's end "
            f"({number(ran['drain_seconds'], 2)} s); {number(ran['jobs_per_second_wall'])} jobs/s counting the "
            f"workers' start-up ({number(ran['wall_seconds'], 2)} s)",
            "baseline, a plain Celery task with a Redis result backend (send + run + result): "
            f"{usec_text(base, split)} per task",
            f"  one Redis core at that cost: {number(base['tasks_per_second_per_core_all'], 0)} tasks/s (a); "
            f"its results take {number(base['memory_per_task_bytes'], 0)} bytes per task",
        ]
    )


# --- main -----------------------------------------------------------------------------------------


def service_env(redis_url: str, storage_url: str, args) -> dict[str, str]:
    """What the web app and the workers read (shared/settings.py): this bench's Redis and storage,
    limits that never refuse, and nothing of the environment's that would change the lifecycle."""
    return {
        "REDIS_URL": redis_url,
        "REDIS_SENTINELS": "",
        "STORAGE_URL": storage_url,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "SUBMIT_RATE_LIMIT": GENEROUS_LIMIT,
        "READ_RATE_LIMIT": GENEROUS_LIMIT,
        "MAX_QUEUED_PER_OWNER": str(max(1000, args.jobs)),
        "WORKER_BATCH_SIZE": str(args.batch),
        "ENCODE_IN_BACKGROUND": args.encode_in_background,
        "WORKER_METRICS_PORT": "",  # W workers on one host cannot share a port
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(models_env(args.models) if args.models else {"OMP_NUM_THREADS": "1"}),
    }


def models_env(models: Path) -> dict[str, str]:
    """--models: the real engine on this CPU, with those models (worker.tiny_models makes some)."""
    folder = models.resolve()
    return {
        "CAPTION_MODEL": str(folder / "caption"),
        "STORY_MODEL": str(folder / "story"),
        "SPEECH_MODEL": str(folder / "speech"),
        "DEVICE": "cpu",
        "STORY_WORDS": "40",  # what `python -m worker.bench` asks for by default
    }


def storage_url_for(args, workdir: Path) -> str:
    if not args.s3_endpoint:
        return f"file://{workdir / 'storage'}"
    os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return f"s3://control-bench-{uuid.uuid4().hex[:12]}/narrator"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.control_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs submitted (and baseline tasks sent)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent worker processes")
    parser.add_argument("--batch", type=int, default=8, help="WORKER_BATCH_SIZE")
    parser.add_argument("--polls", type=int, default=10, help="GETs of each polled job")
    parser.add_argument("--poll-jobs", type=int, default=POLL_SAMPLE, help="jobs polled (a sample of the N)")
    parser.add_argument("--gunicorn", action="store_true", help="serve the web app with gunicorn and submit over HTTP")
    parser.add_argument("--redis-url", help="measure this Redis (default: a private redis-server)")
    parser.add_argument("--s3-endpoint", help="store in a new bucket on this S3 endpoint (default: a temp folder)")
    parser.add_argument(
        "--encode-in-background",
        choices=("on", "off", "auto"),
        default=None,
        help="ENCODE_IN_BACKGROUND: on, as GPU workers encode (the default with the no-op engine), off, "
        "as CPU workers do, or auto (the default with --models)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        help="run the real engine with these models (caption/ story/ speech/) instead of the no-op one: "
        "the service's jobs/s on this machine, to set against `python -m worker.bench` with the same models",
    )
    parser.add_argument(
        "--split-scripts",
        action="store_true",
        help="give (b), the time without the commands scripts call, from the slow log (which slows scripts)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds the run (and the baseline) may take")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too (the last line)")
    parser.add_argument("--logs", type=Path, help="keep the workers' (and gunicorn's) logs in this folder")
    args = parser.parse_args(argv)
    if args.encode_in_background is None:
        args.encode_in_background = "auto" if args.models else "on"
    for name in ("jobs", "workers", "batch", "polls", "poll_jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def open_web(args, key: str, logdir: Path, stack: ExitStack) -> InProcessWeb | HttpWeb:
    if args.gunicorn:
        return HttpWeb(stack.enter_context(gunicorn_web(dict(os.environ), logdir / "web.log")), key)
    return InProcessWeb(key)


def submit_phase(meter: Meter, web: InProcessWeb | HttpWeb, n: int) -> tuple[Phase, list[str]]:
    image = photo()
    meter.start()
    job_ids = [job["id"] for job in each(web, lambda _: web.submit(image), list(range(n)))]
    return meter.stop("submit", "job", n), job_ids


def poll_phase(meter: Meter, web: InProcessWeb | HttpWeb, sample: list[str], polls: int) -> Phase:
    meter.start()
    views = each(web, web.get, [job_id for _ in range(polls) for job_id in sample])
    return meter.stop("poll", "poll", len(views))


def run_times(jobs: list, started: float) -> tuple[float, float]:
    """Seconds from the first claim, and from the workers' start, to the last job's end (the
    records' own times: the watching adds no delay to them)."""
    ended = max(job.finished_at for job in jobs)
    first_claim = min((job.started_at for job in jobs if job.started_at), default=started)
    return ended - first_claim, ended - started


def bench(args, redis_url: str, workdir: Path, logdir: Path, stack: ExitStack) -> dict:
    """The three phases and the baseline: the figures."""
    from shared.jobs import JobStore
    from shared.settings import Settings
    from shared.storage import open_storage
    from web.middleware.auth import create_key

    storage_url = storage_url_for(args, workdir)
    os.environ.update(service_env(redis_url, storage_url, args))  # the app in this process reads them too
    ttl = Settings().job_ttl_seconds
    meter = Meter(redis_url, args.split_scripts)
    stack.callback(meter.close)
    web = open_web(args, create_key(meter.redis, f"control-bench-{uuid.uuid4().hex[:8]}"), logdir, stack)
    before = meter.memory()

    submit, job_ids = submit_phase(meter, web, args.jobs)
    app = "worker.app" if args.models else "worker.control_bench:noop_app"
    workers = Workers(app, args.workers, dict(os.environ), logdir, "engine" if args.models else "noop")
    run = run_phase(meter, workers, job_ids, ttl, args.timeout)
    jobs = check_jobs(JobStore(meter.redis, ttl), open_storage(storage_url), job_ids)
    poll = poll_phase(meter, web, job_ids[: args.poll_jobs], args.polls)

    plain_env = {**os.environ, REDIS_URL_ENV: redis_url}
    plain = Workers("worker.control_bench:baseline_app", args.workers, plain_env, logdir, "plain")
    send, base_run, base_memory = baseline(meter, redis_url, plain, args.jobs, args.timeout)

    drain, wall = run_times(jobs, run.started)
    outcome = Outcome((run.memory_after - before) / args.jobs, drain, wall, base_memory / args.jobs)
    result = figures(args, {p.name: p for p in (submit, run.phase, poll, send, base_run)}, outcome)
    result["config"]["redis_version"] = meter.redis.info("server").get("redis_version", "?")
    return result


def header(args, result: dict) -> str:
    config = result["config"]
    return (
        f"control-plane bench: {args.jobs} jobs, {args.workers} workers, batch {args.batch}, "
        f"{args.polls} polls on each of {config['polled_jobs']} jobs; web {config['web']}, "
        f"storage {config['storage']}, encoding in the background {args.encode_in_background}; "
        f"Redis {config['redis_version']} ({'given' if args.redis_url else 'private'})"
    )


def engine_jobs_per_second(models: Path, batch: int) -> float:
    """The engine's own jobs/s at `batch`, batches one after another, from `python -m worker.bench`
    (its table's row for that batch size: batch | stages... | total | jobs/s | ...)."""
    command = [sys.executable, "-m", "worker.bench", "--models", str(models), "--batches", str(batch)]
    output = subprocess.run(
        [*command, "--runs", "5", "--styles", "none"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    for line in output.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 6 and cells[0] == str(batch):
            return float(cells[6])
    raise BenchError(f"worker.bench gave no figure for batch {batch}:\n{output.stdout[-2000:]}{output.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        before = engine_jobs_per_second(args.models, args.batch) if args.models else 0.0
        with ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="control-bench-")))
            logdir = args.logs or workdir
            logdir.mkdir(parents=True, exist_ok=True)
            redis_url = args.redis_url or stack.enter_context(private_redis(workdir))
            result = bench(args, redis_url, workdir, logdir, stack)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        problems = getattr(exc, "problems", [])
        for line in problems[:LISTED]:
            print(f"  {line}", file=sys.stderr)
        if len(problems) > LISTED:
            print(f"  ... and {len(problems) - LISTED} more", file=sys.stderr)
        return 1
    print(table(result, header(args, result)))
    if args.models:
        # Bracketed: the engine is measured before and after the service, and the two averaged, so a
        # machine whose speed drifts (a shared VM) drifts for both sides alike.
        after = engine_jobs_per_second(args.models, args.batch)
        service, engine = result["run"]["jobs_per_second"], (before + after) / 2
        result["engine_jobs_per_second"] = [before, after]
        print(
            f"service against the engine at batch {args.batch}: {number(service)} against {number(engine)} "
            f"jobs/s ({number(before)} before, {number(after)} after), {service / engine:.2f}x "
            "(engine: python -m worker.bench with the same models)"
        )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
