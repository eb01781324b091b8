"""Bad HTTP, slow clients, upload memory and storage timeouts, against real gunicorn processes.

Each server is `gunicorn -c web/gunicorn_conf.py "web.app:create_app()"` (the committed config:
gevent worker, two processes) on a free port, with the test session's Redis and either a local
folder or moto's S3 server behind a TCP proxy that can turn into a blackhole. Run with `pytest -s`
to see the measured latencies and memory figures.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tests.support.gunicorn import BOUNDARY, gunicorn, multipart
from tests.support.photos import photo
from tests.support.web import job_records

pytestmark = [pytest.mark.timeout(120), pytest.mark.process]  # gunicorn


def png(size=(64, 48), mode="RGB") -> bytes:
    return photo(None, size, "PNG", mode)


def submit_head(length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}{extra}\r\n"
    ).encode()


def memory_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


@pytest.fixture(scope="module")
def local_server(redis_base_url, tmp_path_factory):
    """One gunicorn for the tests on local storage; WEB_BODY_TIMEOUT is short so that the stalled
    uploads' fate can be watched."""
    tmp = tmp_path_factory.mktemp("http-faults")
    env = {"REDIS_URL": redis_base_url, "STORAGE_URL": f"file://{tmp}/data", "WEB_BODY_TIMEOUT": "3"}
    with gunicorn(tmp, env) as server:
        yield server


@pytest.fixture
def r(local_server, redis_base_url):
    client = redis.Redis.from_url(redis_base_url)
    client.flushdb()
    yield client
    client.flushdb()


def jobs_created(client: redis.Redis) -> int:
    return job_records(client)


# --- malformed framing: a 4xx or a closed connection, never a 500, never a job -------------------


def read_status(sock: socket.socket, timeout: float = 10.0):
    """The status code of the first response, or None when the server closed without one."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    if not data:
        return None
    assert data.startswith(b"HTTP/1."), data[:200]
    return int(data.split()[1])


GOOD = multipart(png())
FRAMING_CASES = {
    # a complete upload in a first chunk, then a chunk size that is not hex
    "bad chunk size": submit_head(None) + b"%x\r\n" % len(GOOD) + GOOD + b"\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "chunk size with junk": submit_head(None) + b"%x;;=\r\n" % len(GOOD) + GOOD + b"\r\n0\r\n\r\n",
    # the chunk is longer than its size says: no CRLF where one must be
    "chunked garbage": submit_head(None) + b"10\r\n" + GOOD + b"\r\n0\r\n\r\n",
    "chunked, cut off before the last chunk": submit_head(None) + b"%x\r\n" % len(GOOD) + GOOD + b"\r\n",
    "body shorter than Content-Length": submit_head(len(GOOD) + 100) + GOOD,
    "body cut off mid-file": submit_head(len(GOOD)) + GOOD[: len(GOOD) // 2],
    "Content-Length shorter than the body": submit_head(len(GOOD) - 40) + GOOD,
    "Content-Length and chunked": submit_head(len(GOOD), "Transfer-Encoding: chunked\r\n") + GOOD,
    "two Content-Lengths": submit_head(len(GOOD), f"Content-Length: {len(GOOD) + 5}\r\n") + GOOD,
    "Content-Length not a number": submit_head(None).replace(b"Transfer-Encoding: chunked", b"Content-Length: 12x")
    + GOOD,
    "negative Content-Length": submit_head(-5) + GOOD,
    "garbage request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "request line without a version": b"POST /api/v1/jobs\r\nHost: test\r\n\r\n",
    "header without a colon": b"GET /healthz HTTP/1.1\r\nHost test\r\n\r\n",
    "huge header": b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
    "huge request line": b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
}


@pytest.mark.parametrize("half_close", [True, False], ids=["then-half-close", "then-close"])
def test_malformed_framing_is_4xx_or_closed_and_creates_no_job(local_server, r, half_close):
    statuses = {}
    for name, raw in FRAMING_CASES.items():
        with socket.create_connection(("127.0.0.1", local_server.port), timeout=10) as sock:
            sock.sendall(raw)
            if half_close:  # the client is done sending but still listens for the answer
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:  # the server refused the bytes and closed before this client got to it
                    statuses[name] = "closed"
                    continue
                statuses[name] = read_status(sock)
            else:  # the client gives up at once (it never learns a job id)
                statuses[name] = "closed"
    # A request that is still being processed could create its job after the client left:
    # give the server time, then make sure none appeared.
    time.sleep(1.5 if not half_close else 0.2)
    print(
        f"\nframing ({'half-close' if half_close else 'close'}):",
        ", ".join(f"{name}: {status}" for name, status in statuses.items()),
    )
    for name, status in statuses.items():
        assert status in (None, "closed") or 400 <= status < 500, (name, status)
    assert jobs_created(r) == 0
    # The server is still fine: a good upload still makes a job.
    status, body, _ = local_server.submit(png())
    assert status == 202, body
    assert jobs_created(r) > 0


# --- slow and stalled clients --------------------------------------------------------------------


def test_fifty_stalled_clients_do_not_stop_other_requests(local_server, r):
    heads, uploads = [], []
    started = time.monotonic()
    try:
        for _ in range(25):  # request heads that never end
            sock = socket.create_connection(("127.0.0.1", local_server.port), timeout=30)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            heads.append(sock)
        body = multipart(png((320, 240)))
        for _ in range(25):  # uploads that stop a quarter of the way through
            sock = socket.create_connection(("127.0.0.1", local_server.port), timeout=30)
            sock.sendall(submit_head(len(body)) + body[: len(body) // 4])
            uploads.append(sock)
        time.sleep(0.3)  # let the server take them all in
        latencies = {"healthz": [], "job": []}
        for _ in range(10):
            status, _, seconds = local_server.request("GET", "/healthz", timeout=10)
            assert status == 200
            latencies["healthz"].append(seconds)
            status, _, seconds = local_server.request("GET", f"/api/v1/jobs/{uuid.uuid4().hex[:22]}", timeout=10)
            assert status == 404
            latencies["job"].append(seconds)
        print(
            f"\n50 stalled clients: /healthz max {max(latencies['healthz']) * 1000:.1f} ms, "
            f"GET unknown job max {max(latencies['job']) * 1000:.1f} ms (10 each)"
        )
        assert max(latencies["healthz"]) < 2 and max(latencies["job"]) < 2

        # The server does not wait for ever: unfinished heads are dropped after `keepalive`
        # (5 s), stalled bodies after WEB_BODY_TIMEOUT (3 s here) with a 4xx.
        head_ends = [read_status(sock, timeout=15) for sock in heads]
        head_seconds = time.monotonic() - started
        upload_ends = [read_status(sock, timeout=15) for sock in uploads]
        upload_seconds = time.monotonic() - started
        print(
            f"stalled heads closed after {head_seconds:.1f} s ({set(head_ends)}), "
            f"stalled uploads answered by {upload_seconds:.1f} s ({set(upload_ends)})"
        )
        assert all(status is None or 400 <= status < 500 for status in head_ends + upload_ends)
        assert jobs_created(r) == 0
    finally:
        for sock in heads + uploads:
            sock.close()


# --- memory: many large-pixel uploads at once ----------------------------------------------------


def test_concurrent_40_megapixel_uploads_keep_workers_small(local_server, r):
    # 8000 x 5000 = 40 MP, exactly MAX_IMAGE_PIXELS (accepted), a few KiB on the wire: decoded
    # naively it is 40 MB as mode "1", 120 MB as RGB, for every request in flight.
    bomb = png((8000, 5000), mode="1")
    assert len(bomb) < 16 * 1024
    workers = local_server.workers()
    before = {pid: memory_mb(pid) for pid in workers}
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: local_server.submit(bomb), range(16)))
    assert [status for status, _, _ in results] == [202] * 16, [body[:200] for _, body, _ in results]
    after = {pid: memory_mb(pid) for pid in workers}
    print(
        f"\n16 concurrent 40 MP 1-bit PNG uploads ({len(bomb)} bytes each), slowest "
        f"{max(seconds for _, _, seconds in results):.2f} s:"
    )
    for pid in workers:
        print(
            f"  worker {pid}: VmRSS {before[pid]['VmRSS']:.0f} MB before, {after[pid]['VmRSS']:.0f} MB after, "
            f"peak VmHWM {after[pid]['VmHWM']:.0f} MB"
        )
    assert all(after[pid]["VmHWM"] < 400 for pid in workers)
    assert jobs_created(r) == 16


def test_bad_images_are_refused_through_the_decoding_threads(local_server, r):
    # Under gevent the checks run in native threads: their errors must still come back as the
    # API's codes.
    truncated = png((300, 200), mode="L")[:-30]
    jpeg = photo("teal", (640, 480))
    cases = [
        (b"plain text, not a picture", 415, "not_an_image"),
        (truncated, 415, "truncated_image"),
        (png((8001, 5000), mode="1"), 413, "too_many_pixels"),
        (jpeg[: len(jpeg) // 2], 415, "truncated_image"),
    ]
    logged = local_server.log.stat().st_size
    for data, status, code in cases:
        got, body, _ = local_server.submit(data)
        assert got == status and f'"{code}"'.encode() in body, body
    got, body, _ = local_server.submit(jpeg)
    assert got == 202, body
    assert jobs_created(r) == 1
    # A refused photo is the client's mistake, not the server's: its access-log line, no traceback
    # (gevent's pool prints one for every exception its threads raise).
    with local_server.log.open("rb") as log:
        log.seek(logged)
        lines = log.read().decode(errors="replace").splitlines()
    assert not [line for line in lines if "Traceback" in line or "Error" in line], lines


# --- storage that hangs --------------------------------------------------------------------------


class BlackholeProxy:
    """A TCP proxy to `port` until blackhole() is called; from then on it still accepts
    connections and takes whatever is sent, but nothing passes any more and nothing comes back
    (a firewall dropping packets, a wedged server), on new and open connections alike."""

    def __init__(self, port: int):
        self.target = port
        self.dark = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self):
        self.dark.set()

    def close(self):
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = None
        if not self.dark.is_set():
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets.append(upstream)
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source, sink):
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if sink is None or self.dark.is_set():
                continue  # swallowed
            try:
                sink.sendall(data)
            except OSError:
                return


@pytest.mark.parametrize("when", ["after start", "from the start"])
def test_storage_blackhole_gives_a_quick_503_and_others_are_served(redis_base_url, s3_endpoint, tmp_path, when):
    """After start: storage worked, then hangs (the submits wait in PUT). From the start: the app
    never reached it (the submits wait on the bucket check, one at a time behind a lock)."""
    client = redis.Redis.from_url(redis_base_url)
    client.flushdb()
    proxy = BlackholeProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    if when == "from the start":
        proxy.blackhole()
    env = {
        "REDIS_URL": redis_base_url,
        "STORAGE_URL": f"s3://test-{uuid.uuid4().hex[:12]}/narrator",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{proxy.port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        with gunicorn(tmp_path, env) as server:
            made = 0
            if when == "after start":
                status, body, _ = server.submit(png())
                assert status == 202, body  # storage works through the proxy
                made = 1
                proxy.blackhole()
            else:  # the start-up's failed bucket check is no longer fresh: the submits probe again
                time.sleep(2.5)

            with ThreadPoolExecutor(9) as pool:
                submits = [pool.submit(server.submit, png()) for _ in range(8)]
                ready = pool.submit(server.request, "GET", "/readyz")
                health = []
                while not all(f.done() for f in submits) and len(health) < 200:
                    status, _, seconds = server.request("GET", "/healthz", timeout=10)
                    assert status == 200
                    health.append(seconds)
                    time.sleep(0.25)
                results = [f.result() for f in submits]
                ready_status, ready_body, ready_seconds = ready.result()
            print(
                f"\nstorage blackholed {when}: 8 concurrent submits answered "
                f"{sorted({s for s, _, _ in results})} in "
                f"{min(t for _, _, t in results):.1f}-{max(t for _, _, t in results):.1f} s; "
                f"/readyz {ready_status} in {ready_seconds:.1f} s; "
                f"/healthz max {max(health) * 1000:.0f} ms over {len(health)} requests meanwhile"
            )
            for status, body, seconds in results:
                assert status == 503 and b'"storage_unavailable"' in body, body
                assert seconds < 15
            assert ready_status == 503 and ready_seconds < 6, ready_body
            assert max(health) < 2
            assert job_records(client) == made
    finally:
        proxy.close()
        client.flushdb()
