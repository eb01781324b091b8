"""Redis Sentinel with real processes on loopback ports: a master, two replicas, three Sentinels
(`redis-server <conf> --sentinel`), the web app on a real HTTP server and two solo-pool workers on the
tiny models, all configured with REDIS_SENTINELS only (REDIS_URL points at a port where nothing
listens, so nothing can reach Redis without the Sentinels).

Redis requires a password and the app uses database 3, both from REDIS_URL alone. A client submits
continuously; the master is SIGKILLed mid-run; the Sentinels promote a replica. The
service must answer 503 only during the switch (never a 500, never a request slower than 5 s), and
every job it accepted (202) must end `succeeded` with one MP3: the web app waits for a replica to
have each job before its 202 (WAIT), so a failover cannot lose one. The figures are printed
(pytest -s) and quoted in docs/deployment.md and docs/reliability.md."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared.jobs import JobStore
from shared.jobs.queue import celery_config
from shared.redis_conn import (
    WAIT_TIMEOUT_MS,
    broker_transport_options,
    broker_url,
    redis_client,
    sentinels,
    uses_sentinel,
    wait_for_replicas,
)
from shared.settings import Settings
from shared.storage import open_storage
from tests.support.env import GENEROUS_RATE_LIMIT, TEST_SECRET_KEY, requires_tool
from tests.support.http import post_job
from tests.support.net import free_port, wait_for_port
from tests.support.servers import Worker

needs_redis = requires_tool(bool(shutil.which("redis-server")), "redis-server")

SERIAL = pytest.mark.serial  # failover timings: alone on the machine (the settings tests below need no server)

MASTER_NAME = "narrator-test"
# Above Sentinel's 1 s ping period: at 1000 ms a Sentinel could find the master it had just promoted
# "down" before its first PING to it was answered, and fail over a second time.
DOWN_AFTER_MS = 2000
PASSWORD = "s3cret/pass"  # a character URLs must escape: REDIS_URL carries it percent-encoded
DB = 3
# Nothing listens on port 1: with Sentinel only REDIS_URL's password and database are used.
UNUSED_REDIS_URL = f"redis://:s3cret%2Fpass@127.0.0.1:1/{DB}"


class Node:
    """A redis-server (or Sentinel) of the test's own on a loopback port."""

    def __init__(self, workdir: Path, name: str, args: list[str], port: int | None = None):
        self.port = port or free_port()
        self.name, self.workdir = name, workdir
        self.log = workdir / f"{name}.log"
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> Node:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), *self.args, "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        wait_for_port(self.port, timeout=10)
        return self

    def client(self, **kw) -> redis.Redis:
        """A Sentinel, or (with password=PASSWORD) a data node."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1, **kw)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def data_node(workdir: Path, name: str, master_port: int | None = None) -> Node:
    folder = workdir / name
    folder.mkdir()
    port = free_port()
    args = [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--requirepass",
        PASSWORD,
        "--masterauth",
        PASSWORD,
    ]
    if master_port:
        args += ["--replicaof", "127.0.0.1", str(master_port)]
    return Node(workdir, name, args, port)


def sentinel_node(workdir: Path, name: str, master_port: int) -> Node:
    """A Sentinel with a config file of its own (Sentinel rewrites it as it learns the topology)."""
    folder = workdir / name
    folder.mkdir()
    port = free_port()
    conf = folder / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
        f"sentinel auth-pass {MASTER_NAME} {PASSWORD}\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {MASTER_NAME} 3000\n"
        f"sentinel parallel-syncs {MASTER_NAME} 2\n"
    )
    return Node(workdir, name, [str(conf), "--sentinel"], port)


def wait_until(condition, timeout: float, what: str, pause: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except redis.RedisError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        time.sleep(pause)


@pytest.fixture
def topology(tmp_path):
    """One master, two replicas, three Sentinels that know all of them and each other."""
    nodes: list[Node] = []

    def started(node: Node) -> Node:
        nodes.append(node)  # stopped afterwards even if it never answers
        return node.start()

    try:
        master = started(data_node(tmp_path, "master"))
        replicas = [started(data_node(tmp_path, f"replica{i}", master.port)) for i in (1, 2)]
        wait_until(
            lambda: all(
                r.client(password=PASSWORD).info("replication").get("master_link_status") == "up" for r in replicas
            ),
            20,
            "replicas did not sync",
        )
        sentinels = [started(sentinel_node(tmp_path, f"sentinel{i}", master.port)) for i in (1, 2, 3)]

        def formed():
            states = [s.client().sentinel_master(MASTER_NAME) for s in sentinels]
            return all(st["num-slaves"] == 2 and st["num-other-sentinels"] == 2 for st in states)

        wait_until(formed, 30, "the Sentinels did not find the replicas and each other", pause=0.2)
        yield master, replicas, sentinels
    finally:
        for node in reversed(nodes):
            node.kill()


def reconnected_after(log: str, killed: float) -> float | None:
    """Seconds from the kill to the worker's Celery consumer connecting again after losing the broker
    (from its log's timestamps, local time); None if it never did."""
    lost_at = log.find("Connection to broker lost")
    if lost_at < 0:
        return None
    match = re.search(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO \S+: Connected to sentinel://", log[lost_at:], re.M
    )
    if not match:
        return None
    at = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
    return at - killed


@dataclass
class Submit:
    start: float
    took: float
    status: int
    code: str
    message: str
    job_id: str


def sentinel_env(sentinels: list[Node], tmp_path: Path) -> dict:
    return {
        "REDIS_URL": UNUSED_REDIS_URL,
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in sentinels),
        "REDIS_MASTER_NAME": MASTER_NAME,
        "STORAGE_URL": f"file://{tmp_path}/data",
    }


def web_app(settings: Settings):
    """The app on a real threaded HTTP server; yields its base URL."""
    from werkzeug.serving import make_server

    from web.app import create_app

    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def app_settings(env: dict) -> Settings:
    return Settings(
        **{k.lower(): v for k, v in env.items()},
        secret_key=TEST_SECRET_KEY,
        submit_rate_limit=GENEROUS_RATE_LIMIT,
        read_rate_limit=GENEROUS_RATE_LIMIT,
    )


@SERIAL
@needs_redis
def test_a_killed_master_is_replaced_and_no_accepted_job_is_lost(topology, tmp_path, tiny_models_dir):
    master, replicas, sentinels = topology
    common = sentinel_env(sentinels, tmp_path)
    storage_url = common["STORAGE_URL"]
    env = {
        **common,
        "CAPTION_MODEL": str(tiny_models_dir / "caption"),
        "STORY_MODEL": str(tiny_models_dir / "story"),
        "SPEECH_MODEL": str(tiny_models_dir / "speech"),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "DEVICE": "cpu",
        "STORY_WORDS": "12",
        "HEARTBEAT_SECONDS": "2",
        "LEASE_SECONDS": "8",
    }
    settings = app_settings(common)
    store = JobStore(redis_client(settings, socket_timeout=2, socket_connect_timeout=1), 3600)
    server, base = web_app(settings)
    workers = [Worker(env, tmp_path, f"w{i}") for i in (1, 2)]
    try:
        for worker in workers:
            worker.wait_ready()

        submits: list[Submit] = []
        errors: list[str] = []
        stop = threading.Event()

        def submit_continuously():
            index = 0
            while not stop.is_set():
                index += 1
                started = time.time()
                try:
                    status, body = post_job(base, index, timeout=10)
                except Exception as exc:  # a hang or a dropped connection fails the test
                    errors.append(f"{exc!r} after {time.time() - started:.1f}s")
                    continue
                error = (body.get("error") if status != 202 else None) or {}
                submits.append(
                    Submit(
                        started,
                        time.time() - started,
                        status,
                        error.get("code", ""),
                        error.get("message", ""),
                        body.get("id", ""),
                    )
                )
                time.sleep(0.25)

        thread = threading.Thread(target=submit_continuously, daemon=True)
        thread.start()
        time.sleep(5)
        old = f"127.0.0.1:{master.port}"
        master.kill()
        killed = time.time()

        def master_address() -> str:
            host, port = sentinels[0].client(decode_responses=True).sentinel_get_master_addr_by_name(MASTER_NAME)
            return f"{host}:{port}"

        promoted = wait_until(lambda: (address := master_address()) != old and address, 30, "no replica was promoted")
        promoted_after = time.time() - killed
        wait_until(
            lambda: any(s.start > killed and s.status == 202 for s in submits),
            30,
            "the service did not accept jobs again after the failover",
        )
        time.sleep(5)
        stop.set()
        thread.join(timeout=15)

        accepted = [s.job_id for s in submits if s.status == 202]
        refused = [s for s in submits if s.status != 202]
        last_refusal = max((s.start + s.took for s in refused), default=killed)
        back = min((s.start + s.took for s in submits if s.status == 202 and s.start > last_refusal), default=None)
        assert back is not None, "still refusing when the client stopped"
        switch = back - killed  # from the kill to the first 202 after the last refusal

        def finished():
            jobs = {job_id: store.get(job_id) for job_id in accepted}
            return jobs if all(job is None or job.status.finished for job in jobs.values()) else None

        jobs = wait_until(finished, 90, "accepted jobs did not finish", pause=0.5)
        done_after = max((job.finished_at for job in jobs.values() if job), default=killed) - killed
        # A worker busy or idle at the kill notices at its next broker read (Celery retries at 2 s,
        # 4 s, ...): give each a while to reconnect by itself before judging.
        deadline = time.monotonic() + 30
        while True:
            reconnected = [reconnected_after(worker.log.read_text(), killed) for worker in workers]
            if all(t is not None for t in reconnected) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        statuses = Counter(job.status.value if job else "lost" for job in jobs.values())
        lost = statuses.pop("lost", 0)
        slowest = max(s.took for s in submits)
        not_replicated = sum("replica" in s.message for s in refused)
        print(
            f"\nSentinel failover: master SIGKILLed; Sentinel promoted {promoted} {promoted_after:.1f}s later; "
            f"the service refused submits for {switch:.1f}s ({len(refused)} x "
            f"{dict(Counter((s.status, s.code) for s in refused))}, {not_replicated} of them for want of a "
            f"replica's acknowledgement); accepted {len(accepted)}, finished {sum(statuses.values())} "
            f"({dict(statuses)}), lost {lost}, the last {done_after:.1f}s after the kill; slowest request "
            f"{slowest:.2f}s; {len(submits)} submits in all; the workers' Celery consumers reconnected "
            f"{', '.join(f'{t:.1f}s' if t is not None else 'never' for t in reconnected)} after the kill"
        )

        assert not errors, errors
        assert slowest < 5, "no request may hang"
        assert all(s.status == 503 and s.code in ("redis_unavailable", "queue_unavailable") for s in refused), refused
        assert all(s.start >= killed - 0.5 for s in refused), "503 only once the master is gone"
        assert switch < 15
        assert lost == 0
        assert statuses == {"succeeded": len(accepted)}, {j: v.error for j, v in jobs.items() if v and v.error}
        per_job = Counter(key.split("/")[1] for key in open_storage(storage_url).list("audio/"))
        assert all(per_job[job_id] == 1 for job_id in accepted), {j: per_job[j] for j in accepted if per_job[j] != 1}
        # Everything went to REDIS_URL's database on the new master, with REDIS_URL's password.
        host, port = promoted.split(":")
        new_master = {db: redis.Redis(host=host, port=int(port), password=PASSWORD, db=db) for db in (0, DB)}
        assert new_master[DB].dbsize() > 0 and new_master[0].dbsize() == 0
        # The workers reconnected to the new master by themselves: alive, and their Celery consumer
        # lost the broker and connected again (kombu's Sentinel transport asked the Sentinels).
        for worker, after in zip(workers, reconnected, strict=True):
            assert worker.alive() and after is not None, worker.log.read_text()[-3000:]
    finally:
        for worker in workers:
            worker.kill()
        server.shutdown()


@SERIAL
@needs_redis
def test_a_job_no_replica_acknowledges_is_refused_and_undone(topology, tmp_path):
    """WAIT: with both replicas frozen (SIGSTOP: connected, silent) the master still takes writes,
    but no replica has the job within WAIT_TIMEOUT_MS: the job is removed again and the client gets
    a 503 to retry, instead of a 202 a failover could break."""
    master, replicas, sentinels = topology
    env = sentinel_env(sentinels, tmp_path)
    settings = app_settings(env)
    store = JobStore(redis_client(settings), 3600)
    server, base = web_app(settings)
    try:
        status, body = post_job(base, 1)
        assert status == 202, body
        assert wait_for_replicas(store.redis, settings, store.key(body["id"]), 60) >= 1
        for replica in replicas:
            replica.signal(signal.SIGSTOP)
        started = time.monotonic()
        status, refused = post_job(base, 2)
        took = time.monotonic() - started
        print(f"\nno replica acknowledged: {status} {refused['error']['code']} in {took:.2f}s")
        assert status == 503 and refused["error"]["code"] == "redis_unavailable", refused
        assert "replica" in refused["error"]["message"]
        assert WAIT_TIMEOUT_MS / 1000 <= took < 3
        assert [job.id for job in store.list(10)[0]] == [body["id"]], "the refused job was removed"
        assert open_storage(env["STORAGE_URL"]).list("inputs/") == [f"inputs/{body['id']}"]
    finally:
        for replica in replicas:
            replica.signal(signal.SIGCONT)
        server.shutdown()


# --- the one place that decides how to reach Redis (no server needed) ------------------------------


def test_without_sentinels_everything_uses_redis_url(tmp_path):
    settings = Settings(redis_url="redis://:pw@queue.internal:6380/2")
    assert not uses_sentinel(settings)
    assert broker_url(settings) == celery_config(settings)["broker_url"] == "redis://:pw@queue.internal:6380/2"
    assert "master_name" not in broker_transport_options(settings)
    client = redis_client(settings, socket_timeout=5)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (
        "queue.internal",
        6380,
        2,
        "pw",
        5,
    )
    assert wait_for_replicas(client, settings, "job:x", 60) is None  # no round trip: no replica to wait for


def test_with_sentinels_every_client_asks_them_for_the_master():
    from kombu import Connection
    from redis.sentinel import SentinelConnectionPool

    settings = Settings(
        redis_url="redis://app:s3cret%2Fpass@ignored.invalid:1/3",
        redis_sentinels=" s1.internal:26379, 10.0.0.2:26380 ,",
        redis_master_name="queue",
    )
    assert settings.redis_sentinels == "s1.internal:26379,10.0.0.2:26380"
    assert sentinels(settings) == [("s1.internal", 26379), ("10.0.0.2", 26380)]
    client = redis_client(settings, socket_timeout=10, health_check_interval=10)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "queue" and pool.is_master
    kwargs = pool.connection_kwargs
    assert "host" not in kwargs and (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", "s3cret/pass")
    assert kwargs["socket_timeout"] == 10 and kwargs["health_check_interval"] == 10
    manager = pool.sentinel_manager
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in manager.sentinels
    ] == [("s1.internal", 26379), ("10.0.0.2", 26380)]
    for sentinel in manager.sentinels:  # the Sentinels get short timeouts and no password
        sentinel_kwargs = sentinel.connection_pool.connection_kwargs
        assert sentinel_kwargs["socket_timeout"] == 1.0 and not sentinel_kwargs.get("password")

    url = broker_url(settings)
    assert url == celery_config(settings)["broker_url"]
    assert url == "sentinel://app:s3cret%2Fpass@s1.internal:26379/3;sentinel://app:s3cret%2Fpass@10.0.0.2:26380/3"
    options = celery_config(settings)["broker_transport_options"]
    assert options["master_name"] == "queue" and options["sentinel_kwargs"]["socket_timeout"] == 1.0
    assert options["socket_timeout"] == 10  # the broker connections' own, as without Sentinel
    # A master that vanishes without closing its connections (host off, partition) must not leave a
    # worker waiting on BRPOP forever: TCP keepalive and a user timeout break the connection.
    assert options["socket_keepalive"] is True
    assert options["socket_keepalive_options"].get(getattr(socket, "TCP_KEEPIDLE", -1), 5) <= 10
    assert broker_transport_options(Settings())["socket_keepalive"] is True, "without Sentinel too"
    conn = Connection(url, transport_options=options)
    assert conn.transport_cls == "sentinel" and len(conn.alt) == 2
    assert (conn.userid, conn.password, conn.virtual_host) == ("app", "s3cret/pass", "3")


def test_sentinel_settings_are_checked():
    with pytest.raises(ValueError, match="REDIS_SENTINELS"):
        Settings(redis_sentinels="s1.internal")
    with pytest.raises(ValueError, match="REDIS_SENTINELS"):
        Settings(redis_sentinels="s1.internal:99999")
    with pytest.raises(ValueError, match="REDIS_MASTER_NAME"):
        Settings(redis_sentinels="s1:26379", redis_master_name=" ")
    assert Settings(redis_sentinels="").redis_sentinels == "" and Settings().redis_master_name == "mymaster"
