"""Signed webhooks with real parts: the web app on a real HTTP server, a real
`celery -A shared.webhooks.worker worker -Q webhooks --pool solo` process, the GPU worker on the tiny models for
the end-to-end case, and a real receiver on loopback that verifies every request with
`standardwebhooks.Webhook(secret).verify(body, headers)`. Backoff and timeouts are shortened
through the WEBHOOK_* settings so the whole file runs in well under a minute."""

from __future__ import annotations

import datetime
import io
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import shared.webhooks.urls as urls
from shared.jobs import Job, JobStatus, new_job_id
from shared.jobs.queue import make_celery
from shared.settings import Settings
from shared.webhooks import (
    Outbox,
    check_webhook_url,
    deliver,
    delivery_key,
    webhook_id,
)
from tests.support.keys import create_api_key
from tests.support.photos import photo
from tests.support.web import job_records
from tests.support.webhooks import SERVER_SECRET, Receiver, verified

# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"file://{tmp_path}/data"  # storage is not what these tests are about


@pytest.fixture
def service_env(service_env) -> dict:
    """conftest's environment, plus webhooks to loopback (the receiver) and the server's secret."""
    return {**service_env, "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_SECRET": SERVER_SECRET}


# --- helpers ------------------------------------------------------------------------------------------


def http(method: str, url: str, fields: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """A real HTTP request; a multipart photo upload when `fields` is given."""
    data, headers = None, dict(headers or {})
    if fields is not None:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + photo()
            + b"\r\n"
        )
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def wait_until_finished(base: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = http("GET", f"{base}/api/v1/jobs/{job_id}")
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish in {timeout}s")


def finished_job(app, webhook: str, status=JobStatus.SUCCEEDED, owner=None) -> Job:
    """A job that ended, straight in the store (the GPU worker's part is not under test here): the
    app's store enqueues its webhook as it creates it, as for a result-cache hit."""
    svc = app.extensions["narrator"]
    job = Job(
        id=new_job_id(),
        status=status,
        words=20,
        caption="A teal square.",
        story="Once.",
        finished_at=time.time(),
        webhook=webhook,
        owner=owner,
        audio_key="audio/x.mp3" if status == JobStatus.SUCCEEDED else None,
        error="the story stage failed" if status == JobStatus.FAILED else None,
    )
    return svc.jobs.create(job)


def delivery(app, job_id: str, event: str) -> dict:
    raw = app.extensions["narrator"].redis.hgetall(delivery_key(job_id, event))
    return {k.decode(): v.decode() for k, v in raw.items()}


# --- delivery, end to end ---------------------------------------------------------------------------


def test_a_job_that_succeeds_delivers_one_signed_job_succeeded(celery_worker_process, webhooks_worker, receiver):
    proc, _, base = webhooks_worker
    status, job = http("POST", f"{base}/api/v1/jobs", {"words": 20, "webhook": receiver.url("/done")})
    assert status == 202, job
    job = wait_until_finished(base, job["id"])
    assert job["status"] == "succeeded", job

    [request] = receiver.wait_for("/done", 1)
    payload = verified(request)
    assert request["headers"]["webhook-id"] == webhook_id(job["id"], "job.succeeded")
    assert request["headers"]["Content-Type"] == "application/json"
    assert payload["type"] == "job.succeeded" and payload["timestamp"] == job["finished_at"]
    # The job exactly as GET shows it; audio_url absolute under PUBLIC_BASE_URL.
    assert list(payload["data"]) == list(job)
    assert {k: v for k, v in payload["data"].items() if k != "audio_url"} == {
        k: v for k, v in job.items() if k != "audio_url"
    }
    assert payload["data"]["audio_url"] == f"{base}/api/v1/jobs/{job['id']}/audio"

    time.sleep(1.5)  # longer than any backoff here: nothing more comes
    assert len(receiver.to("/done")) == 1
    # The webhooks worker is light: it never loaded torch.
    assert "torch" not in Path(f"/proc/{proc.pid}/maps").read_text()


def test_500_twice_then_200_is_three_attempts_with_one_id(web_server, webhooks_worker, receiver):
    app, _ = web_server
    svc = app.extensions["narrator"]
    receiver.answers["/flaky"] = [500, 500]
    job = finished_job(app, receiver.url("/flaky"))
    assert svc.jobs.notify([job]) == []  # creating it enqueued it: telling again sends nothing

    requests = receiver.wait_for("/flaky", 3)
    time.sleep(1.5)
    requests = receiver.to("/flaky")
    assert len(requests) == 3, "a delivered webhook must not be sent again"
    assert {r["headers"]["webhook-id"] for r in requests} == {webhook_id(job.id, "job.succeeded")}
    assert all(verified(r)["type"] == "job.succeeded" for r in requests)
    assert requests[1]["at"] < requests[2]["at"]
    assert delivery(app, job.id, "job.succeeded")["state"] == "delivered"
    assert delivery(app, job.id, "job.succeeded")["attempts"] == "3"
    # Telling it again (a second finisher, a repeated cancel) enqueues nothing.
    assert svc.jobs.notify([job]) == []
    time.sleep(0.5)
    assert len(receiver.to("/flaky")) == 3


def test_an_outbox_whose_broker_is_down_raises_nothing_and_can_enqueue_later(redis_url):
    """Ending a job never fails on its webhook: the message that could not be published leaves no
    marker behind, so the next call enqueues it."""
    client = redis.Redis.from_url(redis_url)
    job = Job(id=new_job_id(), status=JobStatus.FAILED, finished_at=time.time(), webhook="https://hooks.example/h")
    key = delivery_key(job.id, "job.failed")
    dead, live = make_celery(Settings(redis_url="redis://127.0.0.1:1/0")), make_celery(Settings(redis_url=redis_url))
    try:
        assert Outbox(dead, client, 60).notify_finished([job]) == []
        assert not client.exists(key)
        assert Outbox(live, client, 60).notify_finished([job]) == [job.id]
        assert client.hget(key, "state") == b"queued" and 0 < client.ttl(key) <= 60
    finally:
        dead.close()
        live.close()


def test_410_stops_at_once(web_server, webhooks_worker, receiver):
    app, _ = web_server
    receiver.answers["/gone"] = [410]
    job = finished_job(app, receiver.url("/gone"), status=JobStatus.FAILED)

    [request] = receiver.wait_for("/gone", 1)
    payload = verified(request)
    assert payload["type"] == "job.failed" and payload["data"]["error"] == "the story stage failed"
    assert payload["data"]["audio_url"] is None
    time.sleep(1.5)
    assert len(receiver.to("/gone")) == 1
    state = delivery(app, job.id, "job.failed")
    assert state["state"] == "failed" and "410" in state["last"]


def test_a_receiver_slower_than_the_timeout_is_tried_again(web_server, webhooks_worker, receiver):
    app, _ = web_server
    receiver.stall["/slow"] = 3  # WEBHOOK_TIMEOUT is 1 s here
    job = finished_job(app, receiver.url("/slow"))

    first, second = receiver.wait_for("/slow", 2)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    verified(second)
    deadline = time.monotonic() + 5
    while delivery(app, job.id, "job.succeeded")["state"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delivery(app, job.id, "job.succeeded")["state"] == "delivered"


def test_a_canceled_job_delivers_job_canceled(web_server, webhooks_worker, receiver):
    app, base = web_server
    # No GPU worker: the job waits in the queue until it is canceled.
    status, job = http("POST", f"{base}/api/v1/jobs", {"webhook": receiver.url("/canceled")})
    assert status == 202, job
    status, canceled = http("POST", f"{base}/api/v1/jobs/{job['id']}/cancel")
    assert status == 200 and canceled["status"] == "canceled"

    [request] = receiver.wait_for("/canceled", 1)
    payload = verified(request)
    assert payload["type"] == "job.canceled" and payload["data"] == canceled
    assert request["headers"]["webhook-id"] == webhook_id(job["id"], "job.canceled")
    assert http("POST", f"{base}/api/v1/jobs/{job['id']}/cancel")[0] == 200  # canceling again
    time.sleep(1)
    assert len(receiver.to("/canceled")) == 1

    # The page's cancel button too (a same-origin form post).
    _, other = http("POST", f"{base}/api/v1/jobs", {"webhook": receiver.url("/page-canceled")})
    request = urllib.request.Request(
        f"{base}/jobs/{other['id']}/cancel",
        data=b"",
        method="POST",
        headers={"Origin": base, "Content-Type": "application/x-www-form-urlencoded"},
    )
    urllib.request.urlopen(request, timeout=10).close()
    [request] = receiver.wait_for("/page-canceled", 1)
    assert verified(request)["type"] == "job.canceled"


def test_an_owners_webhooks_are_signed_with_the_owners_secret(web_server, webhooks_worker, receiver, service_env):
    app, base = web_server
    key = create_api_key(service_env, "alice")
    status, body = http("GET", f"{base}/api/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"})
    assert status == 200
    job = finished_job(app, receiver.url("/alice"), owner="key:alice")
    [request] = receiver.wait_for("/alice", 1)
    assert verified(request, body["secret"])["data"]["id"] == job.id
    with pytest.raises(WebhookVerificationError):
        verified(request, SERVER_SECRET)  # not the server's secret


# --- the secret ------------------------------------------------------------------------------------


def test_the_secret_endpoint_gives_each_owner_its_own_secret(web_server, service_env):
    _, base = web_server
    alice, bob = create_api_key(service_env, "alice"), create_api_key(service_env, "bob")

    def secret(key=None):
        return http("GET", f"{base}/api/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"} if key else {})

    status, first = secret(alice)
    assert status == 200 and first["secret"].startswith("whsec_")
    Webhook(first["secret"])  # a valid Standard Webhooks secret
    assert secret(alice)[1] == first
    status, other = secret(bob)
    assert status == 200 and other["secret"].startswith("whsec_") and other["secret"] != first["secret"]
    status, error = secret()
    assert status == 401 and error["error"]["code"] == "api_key_required"
    assert secret("nk_not-a-key")[0] == 401


def test_a_key_made_again_under_a_revoked_name_gets_a_new_secret(web_server):
    from web.middleware.auth import create_key, revoke_key

    app, base = web_server
    redis_client = app.extensions["narrator"].redis

    def secret(key):
        return http("GET", f"{base}/api/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"})[1]["secret"]

    old = secret(create_key(redis_client, "carol"))
    revoke_key(redis_client, "carol")
    assert secret(create_key(redis_client, "carol")) != old


def test_post_rotates_the_secret_and_deliveries_are_signed_with_the_new_one(web_server, webhooks_worker, receiver):
    from web.middleware.auth import create_key

    app, base = web_server
    key = create_key(app.extensions["narrator"].redis, "dave")
    bearer = {"Authorization": f"Bearer {key}"}
    old = http("GET", f"{base}/api/v1/webhooks/secret", headers=bearer)[1]["secret"]
    status, rotated = http("POST", f"{base}/api/v1/webhooks/secret", headers=bearer)
    assert status == 200 and rotated["secret"].startswith("whsec_") and rotated["secret"] != old
    assert http("GET", f"{base}/api/v1/webhooks/secret", headers=bearer)[1] == rotated
    assert http("POST", f"{base}/api/v1/webhooks/secret")[0] == 401  # a secret belongs to a key
    job = finished_job(app, receiver.url("/dave"), owner="key:dave")
    [request] = receiver.wait_for("/dave", 1)
    assert verified(request, rotated["secret"])["data"]["id"] == job.id
    with pytest.raises(WebhookVerificationError):
        verified(request, old)


# --- refused at submit --------------------------------------------------------------------------------

FAKE_DNS = {
    "internal.example": ["10.1.2.3"],
    "hooks.example": ["93.184.215.14"],
    "mixed.example": ["93.184.215.14", "192.168.0.7"],
}


@pytest.fixture
def fake_dns(monkeypatch):
    def resolve(host, port):
        if host == "localhost":
            return ["127.0.0.1"]
        if host not in FAKE_DNS:
            import socket

            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return FAKE_DNS[host]

    monkeypatch.setattr(urls, "resolve", resolve)


@pytest.fixture
def strict_app(service_env, fake_dns):
    """The app with the defaults: https only, public addresses only."""
    from web.app import create_app

    env = {k.lower(): v for k, v in service_env.items()}
    env.update(webhook_allow_private=False)
    app = create_app(Settings(**env))
    app.config["TESTING"] = True
    yield app
    app.extensions["narrator"].celery.close()


def submit(client, headers=None, **fields):
    return client.post("/api/v1/jobs", data={"image": (io.BytesIO(photo()), "p.jpg"), **fields}, headers=headers)


@pytest.mark.parametrize(
    "url, says",
    [
        ("ftp://hooks.example/x", "https://"),
        ("http://hooks.example/x", "WEBHOOK_ALLOW_PRIVATE"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://localhost/x", "does not resolve to public addresses only"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://internal.example/x", "does not resolve to public addresses only"),
        ("https://mixed.example/x", "does not resolve to public addresses only"),
        # IANA's special-purpose blocks, which ipaddress.is_global alone let through
        ("https://[::127.0.0.1]/x", "may not point at this address"),
        ("https://[64:ff9b:1::7f00:1]/x", "may not point at this address"),
        ("https://[::ffff:0:7f00:1]/x", "may not point at this address"),
        ("https://[fec0::1]/x", "may not point at this address"),
        ("https://192.0.0.8/x", "may not point at this address"),
        ("https://192.0.0.10/x", "may not point at this address"),
        ("https://[2001:db8::1]/x", "may not point at this address"),
        ("https://[2001:2::1]/x", "may not point at this address"),
        ("https://[3fff::1]/x", "may not point at this address"),
        ("https://198.18.0.1/x", "may not point at this address"),
        ("https://240.0.0.1/x", "may not point at this address"),
        ("https://[::ffff:10.0.0.1]/x", "carries 10.0.0.1"),
        ("https://[64:ff9b::a00:1]/x", "carries 10.0.0.1"),
        ("https://[2002:a00:1::1]/x", "carries 10.0.0.1"),
        ("https://hooks.example/" + "a" * 2100, "longer than 2048"),
        ("https://nowhere.example/x", "does not resolve"),
        ("https://user:pw@hooks.example/x", "user name or password"),
        ("https://hooks.example:99999/x", "port"),
        ("not a url", "spaces"),
        ("https://hooks.example/h\u00e9", "percent-encode"),
        ("https://hooks.example/x\r\nX-Injected: 1", "control characters"),
    ],
)
def test_invalid_webhook_urls_are_400_and_create_nothing(strict_app, url, says):
    response = submit(strict_app.test_client(), webhook=url)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "invalid_webhook" and says in error["message"], error
    assert not any(answer in error["message"] for answer in ("10.1.2.3", "192.168.0.7"))  # no DNS answer told
    assert job_records(strict_app.extensions["narrator"].redis) == 0


def test_a_valid_webhook_is_stored_with_the_job(strict_app):
    client = strict_app.test_client()
    response = submit(client, webhook="  https://hooks.example/narrator?token=1 ")
    assert response.status_code == 202, response.get_data(as_text=True)
    job = strict_app.extensions["narrator"].jobs.get(response.get_json()["id"])
    assert job.webhook == "https://hooks.example/narrator?token=1"
    assert "webhook" not in response.get_json()  # not part of the public job
    assert submit(client, webhook="").status_code == 202  # blank: no webhook


def test_the_idempotency_fingerprint_includes_the_webhook(strict_app):
    client = strict_app.test_client()
    headers = {"Idempotency-Key": "hook-1"}
    first = submit(client, headers, webhook="https://hooks.example/a")
    assert first.status_code == 202
    assert submit(client, headers, webhook="https://hooks.example/a").status_code == 200
    other = submit(client, headers, webhook="https://hooks.example/b")
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_without_webhook_secret_only_callers_with_a_key_get_webhooks(service_env, fake_dns):
    from web.app import create_app

    env = {k.lower(): v for k, v in service_env.items()}
    env.update(webhook_secret="")
    app = create_app(Settings(**env))
    client = app.test_client()
    response = submit(client, webhook="https://hooks.example/x")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_webhook" and "WEBHOOK_SECRET" in error["message"]
    key = create_api_key(service_env, "carol")
    response = submit(client, {"Authorization": f"Bearer {key}"}, webhook="https://hooks.example/x")
    assert response.status_code == 202, response.get_data(as_text=True)
    app.extensions["narrator"].celery.close()


# --- checked again at delivery -----------------------------------------------------------------------


def test_delivery_checks_the_address_again(service_env, receiver, redis_url, monkeypatch):
    """A name that resolved to a public address at submit and to a private one now is refused
    without a request; with WEBHOOK_ALLOW_PRIVATE the same delivery goes through."""
    from shared.jobs import JobStore

    client = redis.Redis.from_url(redis_url)
    store = JobStore(client, 3600)
    url = receiver.url("/rebound").replace("127.0.0.1", "hooks.example")
    job = store.create(
        Job(id=new_job_id(), status=JobStatus.CANCELED, finished_at=time.time(), webhook=url.replace("http:", "https:"))
    )
    monkeypatch.setattr(urls, "resolve", lambda host, port: ["127.0.0.1"])
    fast = dict(redis_url=redis_url, webhook_secret=SERVER_SECRET, webhook_max_attempts=2, webhook_timeout=2)

    strict = Settings(**fast, webhook_allow_private=False)
    assert deliver(client, store, strict, job.id, "job.canceled") is None
    state = delivery_key(job.id, "job.canceled")
    assert client.hget(state, "state") == b"failed" and b"not resolve to public addresses" in client.hget(state, "last")
    assert receiver.to("/rebound") == []

    client.delete(state)
    store.update(job.id, webhook=url)  # http too, now
    relaxed = Settings(**fast, webhook_allow_private=True)
    assert deliver(client, store, relaxed, job.id, "job.canceled") is None
    [request] = receiver.to("/rebound")
    assert request["headers"]["Host"] == f"hooks.example:{receiver.server.server_port}"
    assert verified(request)["type"] == "job.canceled"
    # Delivered: a duplicate message finds the series over and sends nothing.
    assert deliver(client, store, relaxed, job.id, "job.canceled") is None
    assert len(receiver.to("/rebound")) == 1


def test_check_webhook_url_returns_the_url_to_store():
    assert check_webhook_url(" https://93.184.215.14/h?x=1 ", False) == "https://93.184.215.14/h?x=1"
    assert check_webhook_url("http://127.0.0.1:9/h", True) == "http://127.0.0.1:9/h"
    for url in ("https://0.0.0.0/", "https://224.0.0.1/", "https://[::ffff:10.0.0.1]/", "https://100.64.0.1/"):
        with pytest.raises(ValueError):
            check_webhook_url(url, False)
    with pytest.raises(ValueError):
        check_webhook_url("https://224.0.0.1/", True)  # never a host, even when private ones are allowed


def self_signed(tmp_path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` (its own CA) and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_https_delivery_checks_the_certificate_for_the_host_name(tmp_path, redis_url, monkeypatch):
    """The request goes to the checked address, with TLS for the URL's host name (SNI and the
    certificate's name): a certificate for another name is an error, retried later."""
    from shared.jobs import JobStore

    cert_file, key_file = self_signed(tmp_path, "hooks.example")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    rec = Receiver(tls=server_tls)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust it, as a public CA would be
        monkeypatch.setattr(urls, "resolve", lambda host, port: ["127.0.0.1"])
        client = redis.Redis.from_url(redis_url)
        store = JobStore(client, 3600)
        settings = Settings(
            redis_url=redis_url,
            webhook_secret=SERVER_SECRET,
            webhook_allow_private=True,
            webhook_max_attempts=3,
            webhook_retry_seconds=0.1,
            webhook_timeout=3,
        )
        port = rec.server.server_port

        job = store.create(
            Job(
                id=new_job_id(),
                status=JobStatus.CANCELED,
                finished_at=time.time(),
                webhook=f"https://hooks.example:{port}/tls",
            )
        )
        assert deliver(client, store, settings, job.id, "job.canceled") is None
        [request] = rec.to("/tls")
        assert verified(request)["data"]["id"] == job.id
        assert client.hget(delivery_key(job.id, "job.canceled"), "state") == b"delivered"

        other = store.create(
            Job(
                id=new_job_id(),
                status=JobStatus.CANCELED,
                finished_at=time.time(),
                webhook=f"https://other.example:{port}/tls",
            )
        )
        wait = deliver(client, store, settings, other.id, "job.canceled")
        assert wait is not None and 0 < wait <= 1  # tried again later
        assert b"certificate" in client.hget(delivery_key(other.id, "job.canceled"), "last").lower()
        assert len(rec.to("/tls")) == 1
    finally:
        rec.close()


def test_a_session_s_secret_expires_after_its_last_use_and_a_key_s_stays(redis_url):
    import redis

    from shared.webhooks.secrets import SESSION_SECRET_TTL, owner_secret, secret_key

    client = redis.Redis.from_url(redis_url)
    owner_secret(client, "session:abc")
    owner_secret(client, "key:erin")
    assert 0 < client.ttl(secret_key("session:abc")) <= SESSION_SECRET_TTL
    assert client.ttl(secret_key("key:erin")) == -1  # until the key is revoked
