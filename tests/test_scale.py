"""Workers on separate hosts. Three "GPU hosts" are Linux network namespaces, each joined by a veth pair
to a bridge in the root namespace and given its own address; Redis and moto's S3 server listen on the
bridge address only, and one solo-pool worker runs in each namespace on the tiny models (DEVICE=cpu,
one thread). A feeder in the root namespace keeps a steady stream of jobs queued the way the web app
makes them (the image in storage, the record in the job store, a Celery wake-up).

- Throughput with 1, 2 and 3 hosts, each with a CPU core of its own where there are enough (jobs/s,
  printed; `pytest -s`).
- A host cut off the network mid-batch (its link down, its process alive): the other hosts finish its
  jobs within a minute, one MP3 each, and once it is back its stale run is refused and writes nothing.

Traffic stays on the test's own namespaces, bridge and loopback: the namespaces have no route beyond
the bridge's /24. Needs root; skips, saying why, only where network namespaces cannot be created.
"""

from __future__ import annotations

import ast
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import redis

from shared.jobs import Job, JobStatus, JobStore, new_job_id
from shared.jobs.files import audio_key
from shared.jobs.queue import QUEUE, make_celery, wake
from shared.settings import Settings
from shared.storage import open_storage
from tests.support.env import requires_tool
from tests.support.net import free_port, wait_for_address
from tests.support.photos import photo
from tests.support.servers import RedisServer, Worker

IP = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None)
TASKSET = shutil.which("taskset")  # util-linux: on every Debian
CPUS = sorted(os.sched_getaffinity(0))
# The throughput test measures, so it runs alone (serial); the host cut asserts no speed beyond its
# generous SLOW budget and runs beside the parallel part.
pytestmark = [
    requires_tool(bool(shutil.which("redis-server")), "redis-server"),
    requires_tool(IP is not None, "ip (iproute2)"),
    pytest.mark.process,
]

HOSTS = ("a", "b", "c")
BATCH = 8  # WORKER_BATCH_SIZE's default
SLOW = 45  # seconds the cut host's batch sleeps (TEST_FAULT_HOOKS): cut, recovery and return fit in it
# (recovery took 33 s on a slow day of this 2-core machine, beside the parallel tests)
# Short leases for the host cut: recovery waits one lease, which only delays what the test shows (the
# defaults' recovery time is measured by tests/test_faults.py's killed worker).
QUICK_LEASES = {"HEARTBEAT_SECONDS": "1", "LEASE_SECONDS": "5"}
TRICKLE = 0.5  # jobs/s submitted while host c is cut: a and b serve them, and c takes some once back
PREFIX = "nrscale"  # namespaces nrscale-<pid>-<run>-<host>; links nrb/nrv<pid hex, 6><run, 2>[host]


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = [IP, *(["-n", ns] if ns else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def _sweep_leftovers() -> None:
    """Namespaces and links of earlier runs whose pytest process is gone (killed before its finally), and
    the workers it left running inside those namespaces."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(rf"{PREFIX}-(\d+)-\w+-\w+", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ip("netns", "del", name, check=False)
    for name in re.findall(r"^\d+: (nr[bv][0-9a-f]{8}\w?)[@:]", ip("-o", "link", "show", check=False).stdout, re.M):
        if not Path(f"/proc/{int(name[3:9], 16)}").exists():
            ip("link", "del", name, check=False)


class Host:
    """One "GPU host": a network namespace whose only link is a veth pair to the test's bridge, and a CPU
    core of its own where the machine has enough (its worker and the worker's ffmpeg processes stay on it)."""

    def __init__(self, name: str, ns: str, veth: str, address: str, cpu: int):
        self.name, self.ns, self.veth, self.address, self.cpu = name, ns, veth, address, cpu

    @property
    def prefix(self) -> tuple[str, ...]:
        pin = (TASKSET, "-c", str(self.cpu)) if TASKSET else ()
        return (IP, "netns", "exec", self.ns, *pin)

    def cut(self) -> None:
        """Off the network: its end of the cable unplugged (the process inside keeps running)."""
        ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        ip("link", "set", self.veth, "up")


@contextmanager
def host_network(count: int):
    """A bridge with an address of a private 10.213.N.0/24 no interface here uses, and `count` hosts on it.
    Everything is deleted afterwards, whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (`ip netns add`); run as root, as CI does")
    _sweep_leftovers()
    tag = f"{os.getpid():06x}{random.randrange(256):02x}"
    used = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show", "table", "all").stdout
    free = [n for n in range(1, 255) if f"10.213.{n}." not in used]
    if not free:
        pytest.fail("no free 10.213.N.0/24 for the test network")
    subnet = f"10.213.{random.choice(free)}"
    bridge, namespaces, hosts = f"nrb{tag}", [], []
    try:
        for name in HOSTS[:count]:
            ns = f"{PREFIX}-{os.getpid()}-{tag[6:]}-{name}"
            result = ip("netns", "add", ns, check=False)
            if result.returncode != 0 and not namespaces:
                pytest.skip(f"cannot create network namespaces here (`ip netns add`: {result.stderr.strip()})")
            if result.returncode != 0:
                raise RuntimeError(f"ip netns add {ns} failed: {result.stderr.strip()}")
            namespaces.append(ns)
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, (name, ns) in enumerate(zip(HOSTS, namespaces, strict=True)):
            veth, address = f"nrv{tag}{i}", f"{subnet}.{11 + i}"
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", veth, "master", bridge, "up")
            ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
            ip("link", "set", "lo", "up", ns=ns)
            hosts.append(Host(name, ns, veth, address, cpu=CPUS[i % len(CPUS)]))
        yield f"{subnet}.1", hosts
    finally:
        problems = []
        for ns in namespaces:  # deleting a namespace deletes its end of the veth pair, and so the pair
            result = ip("netns", "del", ns, check=False)
            if result.returncode:
                problems.append(result.stderr.strip())
        for host in hosts:
            ip("link", "del", host.veth, check=False)  # normally gone with its namespace already
        if ip("link", "show", bridge, check=False).returncode == 0:
            ip("link", "del", bridge, check=False)
        left = [ns for ns in namespaces if ns in ip("netns", "list", check=False).stdout]
        assert not left and not problems, f"test network not cleaned up: {left} {problems}"


class Cluster:
    """The hosts, the shared Redis and storage on the bridge, and what the root namespace needs to submit."""

    def __init__(self, hosts: list[Host], redis_url: str, storage_url: str, env: dict, logdir: Path):
        self.hosts = {host.name: host for host in hosts}
        self.storage_url, self.env, self.logdir = storage_url, env, logdir
        self.redis = redis.Redis.from_url(redis_url)
        self.store = JobStore(self.redis, 3600)
        self.storage = open_storage(storage_url)
        self.celery = make_celery(Settings(redis_url=redis_url))
        self.workers: dict[str, Worker] = {}
        self.inputs: list[str] = []
        self.server_pids: list[int] = []  # Redis and moto: the test's own load, like the workers

    def start_workers(self, **env_by_host: dict) -> dict[str, Worker]:
        """One worker in each named host, started together; returns them once all are ready."""
        for name, env in env_by_host.items():
            self.workers[name] = Worker({**self.env, **env}, self.logdir, name, prefix=self.hosts[name].prefix)
        for name in env_by_host:
            self.workers[name].wait_ready(timeout=120)
        return {name: self.workers[name] for name in env_by_host}

    def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.alive():
                os.kill(worker.pid, signal.SIGCONT)  # harmless if it runs; SIGKILL works either way
            worker.kill()

    def submit(self, index: int, filename: str = "p.jpg") -> str:
        if not self.inputs:  # a few photos, uploaded once: the stream should load the workers, not moto
            for i in range(8):
                self.storage.put(f"inputs/scale-{i}", photo(i))
                self.inputs.append(f"inputs/scale-{i}")
        job_id = new_job_id()
        self.store.create(
            Job(
                id=job_id,
                input_key=self.inputs[index % len(self.inputs)],
                words=16,
                filename=filename,
                content_type="image/jpeg",
            )
        )
        return job_id

    def consume(self, names) -> None:
        """Only these hosts take wake-ups; the others finish their batch and idle (as when draining a host).
        Returns once the others hold no job."""
        node = {name: f"{name}@{socket.gethostname()}" for name in self.workers}  # --hostname NAME@%h
        for name in self.workers:
            command = self.celery.control.add_consumer if name in names else self.celery.control.cancel_consumer
            command(QUEUE, destination=[node[name]], reply=False)
        others = [worker for name, worker in self.workers.items() if name not in names]
        deadline, idle = time.monotonic() + 30, 0
        while idle < 3:  # three looks in a row: a batch starts within milliseconds of the last one's end
            running = [i.decode() for i in self.redis.zrange(JobStore.RUNNING, 0, -1)]
            idle = 0 if any(self.running_on(running, worker) for worker in others) else idle + 1
            assert time.monotonic() < deadline, "a host still held jobs 30s after it stopped taking them"
            time.sleep(0.2)

    def running_on(self, ids, worker: Worker) -> list[str]:
        return [
            job_id
            for job_id in ids
            if (job := self.store.get(job_id))
            and job.status is JobStatus.RUNNING
            and job.worker
            and f":{worker.pid}:" in job.worker
        ]


class Feeder:
    """A steady stream of submissions from the root namespace: keeps about `depth` jobs queued, or
    submits about `rate` jobs a second (a trickle that keeps hosts serving without keeping every core
    busy)."""

    def __init__(self, cluster: Cluster, depth: int = 0, rate: float | None = None):
        self.cluster, self.depth, self.rate = cluster, depth, rate
        self.ids: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.05 if self.rate is None else 1 / self.rate):
            try:
                missing = 1 if self.rate else self.depth - self.cluster.store.queued_count()
                if missing > 0:
                    new = [self.cluster.submit(len(self.ids) + i) for i in range(missing)]
                    self.ids += new
                    wake(self.cluster.celery, new)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))
                time.sleep(0.5)


@pytest.fixture(scope="module")
def network():
    with host_network(len(HOSTS)) as net:
        yield net


@pytest.fixture(scope="module")
def servers(network, tmp_path_factory):
    """Redis and moto's S3 server, listening on the bridge address only."""
    bridge, _ = network
    redis_server = RedisServer(tmp_path_factory.mktemp("scale-redis"), host=bridge)
    redis_server.start()
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", bridge, "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_address(bridge, port)
        yield redis_server, f"http://{bridge}:{port}", moto.pid
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        redis_server.stop()


@pytest.fixture
def cluster(network, servers, tiny_models_dir, tmp_path, monkeypatch):
    bridge, hosts = network
    redis_server, s3, moto_pid = servers
    no_proxy = ",".join(filter(None, [bridge, os.environ.get("NO_PROXY", "")]))
    aws = {
        "AWS_ENDPOINT_URL_S3": s3,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    storage_url = f"s3://scale-{uuid.uuid4().hex[:12]}/narrator"
    open_storage(storage_url).ensure_ready()
    env = {
        **aws,
        "REDIS_URL": redis_server.url,
        "STORAGE_URL": storage_url,
        "CAPTION_MODEL": str(tiny_models_dir / "caption"),
        "STORY_MODEL": str(tiny_models_dir / "story"),
        "SPEECH_MODEL": str(tiny_models_dir / "speech"),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "DEVICE": "cpu",
        "TEST_FAULT_HOOKS": "0",
    }
    cluster = Cluster(hosts, redis_server.url, storage_url, env, tmp_path)
    cluster.server_pids = [redis_server.proc.pid, moto_pid]
    cluster.redis.flushdb()
    try:
        yield cluster
    finally:
        cluster.stop_all()
        for host in hosts:
            host.restore()


# Celery logs what each wake-up's task returned: {job id: outcome} for the jobs its run held.
TASK_LINE = re.compile(
    r"^(\S+ \S+) INFO celery\.app\.trace: Task narrate_job\[[^]]+\] succeeded in [\d.]+s: "
    r"(\{.*\})$",
    re.M,
)


def log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the workers' logging asctime


def task_result(worker: Worker, job_id: str):
    """The Celery log line of the task that ran `job_id` (its return value: {job id: outcome})."""
    for match in TASK_LINE.finditer(worker.log.read_text()):
        if f"'{job_id}'" in match.group(2):
            return match
    return None


def cpu_of(worker: Worker) -> str:
    """The CPUs the worker may run on, as the kernel has them."""
    status = Path(f"/proc/{worker.pid}/status").read_text()
    return re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M).group(1)


def one_mp3_each(cluster: Cluster, jobs: dict) -> None:
    per_job = Counter(key.split("/")[1] for key in cluster.storage.list("audio/"))
    assert all(per_job[job_id] == 1 for job_id in jobs), {j: per_job[j] for j in jobs if per_job[j] != 1}


def jobs_per_second(jobs, start: float, end: float) -> float:
    """Jobs finished between start and end, each counted for the share of its run (claimed to finished) that
    falls in the window: a batch of 8 straddling an edge counts in part, not as 0 or 8."""
    done = 0.0
    for job in jobs:
        if job.status is JobStatus.SUCCEEDED and job.started_at and job.finished_at > job.started_at:
            overlap = min(end, job.finished_at) - max(start, job.started_at)
            done += max(0.0, overlap) / (job.finished_at - job.started_at)
    return done / (end - start)


# Cores' worth of CPU that processes other than the test's own (pytest with the feeder, the workers and
# their ffmpeg, Redis, moto) may use during the throughput windows before the scaling is no longer asserted.
BUSY_ELSEWHERE = 0.5


def busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    """CPU seconds the processes and the children they waited for (a worker's ffmpeg) have used, 0 for one
    that is gone."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in stat[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


@pytest.mark.serial
def test_throughput_grows_with_hosts(cluster):
    """1, 2 and 3 hosts on the same steady stream, in interleaved rounds so that load from other processes on
    the machine falls on every host count alike. A host leaves and rejoins the way an operator drains one
    (Celery's cancel_consumer / add_consumer: it finishes its batch and takes no more wake-ups). Each host's
    worker has a CPU core of its own, as a machine would; on a 2-core box the third shares the first's."""
    workers = cluster.start_workers(**{name: {} for name in HOSTS})
    ours = [os.getpid(), *cluster.server_pids, *(worker.pid for worker in workers.values())]
    busy_before, ours_before, started = busy_seconds(), cpu_seconds(ours), time.monotonic()
    windows = []
    with Feeder(cluster, depth=2 * BATCH * len(HOSTS)) as feeder:
        for order in [(1, 2, 3), (3, 2, 1)]:  # two rounds: make test's time is precious
            for count in order:
                cluster.consume(HOSTS[:count])  # returns once the hosts that left have finished their batch
                time.sleep(0.5)
                start = time.time()
                time.sleep(3)  # 30-50 jobs a window on the tiny models: enough for these margins
                windows.append((count, start, time.time()))
    others = (busy_seconds() - busy_before - (cpu_seconds(ours) - ours_before)) / (time.monotonic() - started)
    assert not feeder.errors, feeder.errors[:3]
    deadline = time.monotonic() + 60
    while any(cluster.store.get(job_id).status is JobStatus.RUNNING for job_id in feeder.ids):
        assert time.monotonic() < deadline, "jobs still running 60s after the stream stopped"
        time.sleep(0.5)
    finished = {job_id: cluster.store.get(job_id) for job_id in feeder.ids}
    rates: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for count, start, end in windows:
        rates[count].append(jobs_per_second(finished.values(), start, end))
    best = {count: max(values) for count, values in rates.items()}
    cores = ", ".join(f"{name} {cpu_of(worker)}" for name, worker in workers.items())
    print(
        f"\nthroughput on the tiny models, WORKER_BATCH_SIZE {BATCH}, {len(feeder.ids)} jobs in all "
        f"(CPU cores of the hosts' workers: {cores}; other processes used {others:.2f} cores meanwhile):"
    )
    for count in (1, 2, 3):
        print(
            f"  {count} host(s): {best[count]:.2f} jobs/s, {best[count] / best[1]:.2f}x one host "
            f"(best of {', '.join(f'{r:.2f}' for r in rates[count])})"
        )
    failed = {j: job.error for j, job in finished.items() if job.status is JobStatus.FAILED}
    assert not failed, failed
    one_mp3_each(cluster, {j: job for j, job in finished.items() if job.status is JobStatus.SUCCEEDED})
    # Two hosts, each with its own core, must beat one clearly (the root namespace's Redis, moto and feeder
    # share those cores: hence not 2x); the third shares a core on a 2-core machine, so it need only not
    # make things much worse. Compared within each round (its windows seconds apart, so a change of load
    # from outside falls on them alike) and the round that shows it best counts, with margins. While other
    # processes take a good part of the cores (other test runs on a shared machine) the hosts get what they
    # leave, whatever their number: then the figures are printed, not asserted. One core cannot show it.
    if not (TASKSET and len(CPUS) >= 2):
        print(f"  (scaling not asserted: the hosts cannot have a core each here: cores {CPUS}, taskset {TASKSET})")
        return
    if others > BUSY_ELSEWHERE:  # said in the run's warnings summary, not only under -s
        busy = f"other processes kept {others:.1f} of the {len(CPUS)} cores busy"
        warnings.warn(f"throughput scaling not asserted: {busy}", stacklevel=1)
        return
    rounds = [dict(zip((1, 2, 3), values, strict=True)) for values in zip(*(rates[c] for c in (1, 2, 3)), strict=True)]
    assert max(r[2] / r[1] for r in rounds) >= 1.15, rates
    assert max(r[3] / r[1] for r in rounds) >= 0.9, rates


def test_a_host_cut_off_mid_batch_loses_its_jobs_to_the_others_and_its_late_work_is_refused(cluster):
    """QUICK_LEASES on every host; host c's batch sleeps SLOW seconds (fault hook)."""
    workers = cluster.start_workers(a=QUICK_LEASES, b=QUICK_LEASES, c={**QUICK_LEASES, "TEST_FAULT_HOOKS": "1"})
    a, b, c = workers["a"], workers["b"], workers["c"]
    host = cluster.hosts["c"]
    # c must take the slow batch: a and b, idle, are paused while it claims (a wake-up one of them
    # swallows meanwhile is only a wake-up: c claims the queued jobs whichever message reaches it).
    with ExitStack() as paused:
        for worker in (a, b):
            os.kill(worker.pid, signal.SIGSTOP)
            paused.callback(os.kill, worker.pid, signal.SIGCONT)
        ids = [cluster.submit(0, filename=f"__sleep_{SLOW}__.jpg")] + [cluster.submit(i) for i in range(1, BATCH)]
        wake(cluster.celery, ids)
        deadline = time.monotonic() + 30
        while len(cluster.running_on(ids, c)) < len(ids):
            assert time.monotonic() < deadline, "host c never took the slow batch"
            time.sleep(0.1)
    claimed_at = time.time()
    stale_run = cluster.store.get(ids[0]).worker
    with Feeder(cluster, rate=TRICKLE) as feeder:
        time.sleep(2)
        assert cluster.running_on(ids, c) == ids  # mid-batch
        host.cut()
        cut_at = time.time()
        while not all(cluster.store.get(job_id).status.finished for job_id in ids):
            if time.time() - cut_at > 60:
                pytest.fail(
                    f"host c's jobs unfinished 60s after the cut: "
                    f"{Counter(cluster.store.get(j).status.value for j in ids)}"
                )
            time.sleep(0.2)
        recovered = {job_id: cluster.store.get(job_id) for job_id in ids}
        recovery = max(job.finished_at for job in recovered.values()) - cut_at
        assert time.time() - claimed_at < SLOW - 5, "the recovery outlasted c's slow batch: raise SLOW"
        host.restore()
        restored_at = time.time()
        assert c.alive()
        # c wakes from its slow batch, now back on the network: every write of its run is refused.
        deadline = claimed_at + SLOW + 60
        while not (outcome := task_result(c, ids[0])):
            assert time.time() < deadline, "host c's stale run never ended:\n" + c.log.read_text()[-3000:]
            time.sleep(0.5)
        stale_ended = log_time(outcome.group(1))
        # ...and c takes new work again.
        deadline = time.monotonic() + 30
        while not any(m.group(2) != "{}" for m in TASK_LINE.finditer(c.log.read_text().split(outcome.group(0), 1)[1])):
            assert time.monotonic() < deadline, "host c took no new jobs after it came back"
            time.sleep(0.5)
    assert not feeder.errors, feeder.errors[:3]
    outcomes = ast.literal_eval(outcome.group(2))
    after = {job_id: cluster.store.get(job_id) for job_id in ids}
    log_c, log_ab = c.log.read_text(), a.log.read_text() + b.log.read_text()
    print(
        f"\nhost c ({host.address}) cut off mid-batch: its {len(ids)} jobs finished on the other hosts "
        f"{recovery:.1f}s after the cut "
        f"(attempts {dict(Counter(j.attempts for j in after.values()))}); back on the network "
        f"{restored_at - cut_at:.1f}s after the cut, its stale run ended {stale_ended - restored_at:.1f}s later "
        f"with {dict(Counter(outcomes.values()))}; heartbeat noticed: {'no longer holding' in log_c}; "
        f"{len(feeder.ids)} stream jobs submitted meanwhile"
    )
    assert outcomes == dict.fromkeys(ids, "lost")
    assert all(job.status is JobStatus.SUCCEEDED and job.attempts == 2 for job in after.values()), after
    assert all(f"'{job_id}': 'succeeded'" in log_ab for job_id in ids)  # finished by a or b
    for job_id, job in after.items():
        # The newer run's result stands: nothing of the stale run was written, in the record or in storage.
        before = recovered[job_id]
        assert (job.audio_key, job.caption, job.story, job.finished_at) == (
            before.audio_key,
            before.caption,
            before.story,
            before.finished_at,
        )
        assert job.audio_key != audio_key(job_id, stale_run)
        assert cluster.storage.list(f"audio/{job_id}/") == [job.audio_key]
    stream = {j: job for j in feeder.ids if (job := cluster.store.get(j)) and job.status is JobStatus.SUCCEEDED}
    one_mp3_each(cluster, {**after, **stream})
