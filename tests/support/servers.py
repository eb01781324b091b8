"""Real processes for tests: Celery workers (plain, or with faults on demand), a Redis with AOF that can be
restarted, a TCP proxy that can cut a connection, and a supervisor that replaces dead workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tests.support.env import ROOT
from tests.support.net import free_port, wait_for_address


def celery_worker_command(hostname: str, app: str = "worker.app", *options: str) -> list[str]:
    """`celery worker` as every test runs it: the solo pool, no gossip, mingle or heartbeat (our
    leases and presence keys do that work), INFO logs that tests read for "ready."."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", *options, "--pool", "solo", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname", hostname,
    ]  # fmt: skip


class RedisServer:
    """A private redis-server with an append-only file, so a restart keeps every write. It listens on
    loopback, or on `host` (e.g. a test network's bridge address, for workers in other namespaces)."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1"):
        self.host = host
        self.port, self.workdir = free_port(), workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        # Another address than loopback: protected mode would refuse the other namespaces' clients.
        protected = [] if self.host == "127.0.0.1" else ["--protected-mode", "no"]
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                self.host,
                *protected,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_address(self.host, self.port)

    def stop(self) -> None:
        """A clean stop (SIGTERM): Redis flushes its AOF first."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class TcpProxy:
    """Forwards a local port to another; `cut()` drops every connection and refuses new ones
    until `restore()`, as a storage outage would."""

    def __init__(self, target_port: int):
        self.target_port, self.port = target_port, free_port()
        self.up = True
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.up = False
        with self._lock:
            for conn in list(self._conns):
                _close(conn)
            self._conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        _close(self._server)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                _close(client)  # a reset, at once
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _close(sock)
                with self._lock:
                    self._conns.discard(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Worker:
    """`celery -A worker.app worker --pool solo` as a separate process, logging to a file; with
    TEST_FAULT_HOOKS=1 in `env`, `celery -A tests.fault_app ...`, the same worker with faults
    on demand (tests/fault_app.py). `prefix` runs it through another command that execs it (e.g.
    `ip netns exec NS`, so `pid` is the worker's)."""

    def __init__(self, env: dict, logdir: Path, name: str, prefix: tuple[str, ...] = ()):
        self.log = logdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        app = "tests.fault_app" if env.get("TEST_FAULT_HOOKS") == "1" else "worker.app"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*prefix, *celery_worker_command(f"{name}@%h", app)],
                cwd=ROOT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 90) -> Worker:
        deadline = time.monotonic() + timeout
        while b"ready." not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("worker did not start:\n" + self.log.read_text()[-3000:])
            time.sleep(0.2)
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def alive(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Keeps `count` workers running, starting a new one whenever one dies (as Docker's restart
    policy would); remembers how many died."""

    def __init__(self, env: dict, logdir: Path, count: int):
        self.env, self.logdir = env, logdir
        self.workers = [Worker(env, logdir, f"w{i}") for i in range(count)]
        for worker in self.workers:
            worker.wait_ready()
        self.deaths = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for i, worker in enumerate(self.workers):
                if not worker.alive():
                    self.deaths += 1
                    self.workers[i] = Worker(self.env, self.logdir, f"w{i}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for worker in self.workers:
            worker.kill()


def timed_runs(*runs: tuple[list[str], Path, dict], timeout: float) -> list[tuple[subprocess.CompletedProcess, float]]:
    """Run (command, cwd, env) side by side to their ends (output captured); each with the seconds it
    took. Side by side, a busy machine slows them alike, so one is a fair yardstick for another."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()

    def run(command: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return result, time.monotonic() - started

    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda r: run(*r), runs))


def connections_waiting(sock: socket.socket) -> int:
    """How many connections the kernel accepted on a listening sock nobody accepts from: each stays
    in the backlog, closed by its client or not (how many times a program probed a blackhole)."""
    sock.setblocking(False)
    count = 0
    while True:
        try:
            sock.accept()[0].close()
        except BlockingIOError:
            return count
        count += 1


def within_one_probe(limit: float, offline_seconds: float) -> float:
    """How long a command that probes the model hub once may take: the issue's `limit`, or on a machine
    too slow or busy for it, the same command's offline run beside it (which never probes) twice over,
    plus the probe's deadline."""
    from worker.engine.hub import PROBE_TIMEOUT

    return max(limit, 2 * offline_seconds + PROBE_TIMEOUT)
