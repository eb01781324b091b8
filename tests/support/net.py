"""Ports and waiting for them."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager


def free_port() -> int:
    """A port nothing listens on now (bound and released): for a server to take, or to find closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


closed_port = free_port  # a port to connect to and be refused


def wait_for_address(host: str, port: int, timeout: float = 30.0) -> None:
    """Until something accepts connections on host:port (any local address: a test network's bridge, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on {host}:{port} within {timeout}s")


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    wait_for_address("127.0.0.1", port, timeout)


@contextmanager
def serving(command: list[str], port: int, env: dict | None = None):
    """A server process of the test session's own, up once its port answers, stopped afterwards."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
