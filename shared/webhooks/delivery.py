"""One delivery attempt, per Standard Webhooks, and what follows it.

Body `{"type": "job.succeeded" | "job.failed" | "job.canceled", "timestamp": <when the job ended>,
"data": <the job as GET shows it>}`; headers `webhook-id` (the same on every attempt),
`webhook-timestamp` and `webhook-signature` (HMAC-SHA256 with the owner's `whsec_` secret, or
WEBHOOK_SECRET for an ownerless job). 2xx: delivered (and never sent again); 408, 429, 5xx, timeouts
and connection errors: tried again with exponential backoff (WEBHOOK_RETRY_SECONDS, doubled,
capped at WEBHOOK_RETRY_MAX_SECONDS, up to WEBHOOK_MAX_ATTEMPTS); any other answer (3xx, 4xx,
410 Gone): the series stops.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import random
import secrets
import socket
import ssl
import threading
import time
from datetime import UTC, datetime

from shared.jobs.public import public_job
from shared.jobs.schema import Job, JobStatus, iso
from shared.settings import Settings
from shared.webhooks.outbox import EVENTS, delivery_key, webhook_id
from shared.webhooks.secrets import signing_secret
from shared.webhooks.urls import DeliveryError, InvalidWebhook, Target, resolve_webhook

log = logging.getLogger(__name__)

USER_AGENT = "narrator-webhooks/1"


def retry_delay(settings: Settings, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential from
    WEBHOOK_RETRY_SECONDS, +-10% jitter, at least what the receiver's Retry-After asked for, never
    above WEBHOOK_RETRY_MAX_SECONDS."""
    wait = settings.webhook_retry_seconds * 2 ** min(attempt - 1, 30) * random.uniform(0.9, 1.1)
    if retry_after is not None:
        wait = max(wait, retry_after)
    return min(wait, settings.webhook_retry_max_seconds)


def build_request(
    job: Job, event: str, secret: str, base_url: str | None, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt, signed with `secret` at `now`."""
    from standardwebhooks import Webhook

    payload = {"type": event, "timestamp": iso(job.finished_at), "data": public_job(job, base_url)}
    body = json.dumps(payload, separators=(",", ":"))  # ASCII: the signed text is the bytes sent
    msg_id = webhook_id(job.id, event)
    stamp = math.floor(time.time() if now is None else now)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
    }
    return body.encode("ascii"), headers


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None  # an HTTP date is rare from webhook receivers; the backoff applies


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, float | None]:
    """POST to one of the checked addresses (never a fresh lookup), within `timeout` seconds in
    all: connect, TLS (certificate checked for the host name), send, answer. Redirects are not
    followed. Returns (status, Retry-After seconds); DeliveryError when no answer came."""
    deadline = time.monotonic() + timeout
    sock, errors = None, []
    for address in target.addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            sock = socket.create_connection((address, target.port), timeout=left)
            break
        except OSError as exc:
            errors.append(f"{address}: {exc}")
    if sock is None:
        raise DeliveryError("could not connect (" + "; ".join(errors or ["timed out"]) + ")")
    # Each socket operation has its own timeout; a receiver that trickles its answer byte by byte
    # is cut off at the deadline by shutting the socket down under the reading thread.
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, [sock])
    watchdog.daemon = True
    watchdog.start()
    conn: http.client.HTTPConnection | None = None
    try:
        if target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
            watchdog.args = [sock]
            conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        conn.sock = sock  # already connected to a checked address
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        status = response.status
        retry_after = _retry_after(response.getheader("Retry-After"))
        response.read(4096)
        return status, retry_after
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if time.monotonic() >= deadline:
            raise DeliveryError(f"no answer within {timeout:g}s") from None
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    finally:
        watchdog.cancel()
        if conn is not None:
            conn.close()
        sock.close()


def _shut(sock) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
    except OSError:
        pass


# KEYS[1] the in-flight lock. ARGV[1] our token. Frees it only if it is still ours.
_UNLOCK_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def deliver(redis_client, store, settings: Settings, job_id: str, event: str) -> float | None:
    """One attempt at delivering a job's final event. Returns the seconds to wait before the next
    attempt, or None when the series is over (delivered, refused, out of attempts, or another
    copy of this message is already at it)."""
    key = delivery_key(job_id, event)
    state = redis_client.hget(key, "state")
    state = state.decode() if isinstance(state, bytes) else state
    if state in ("delivered", "failed"):
        return None  # never twice: a duplicate message finds the series over
    lock, token = key + ":lock", secrets.token_hex(8)
    if not redis_client.set(lock, token, nx=True, ex=int(settings.webhook_timeout) + 30):
        log.info("webhook %s: another attempt is in flight; this copy stops", webhook_id(job_id, event))
        return None
    try:
        return _attempt(redis_client, store, settings, job_id, event, key)
    finally:
        redis_client.register_script(_UNLOCK_LUA)(keys=[lock], args=[token])


def _attempt(redis_client, store, settings: Settings, job_id: str, event: str, key: str) -> float | None:
    msg_id = webhook_id(job_id, event)

    def end(state: str, last: str, level=logging.WARNING) -> None:
        redis_client.hset(key, mapping={"state": state, "last": last})
        redis_client.expire(key, store.ttl)
        log.log(level, "webhook %s: %s (%s)", msg_id, state, last)

    job = store.get(job_id)
    if job is None or not job.webhook:
        end("failed", "the job or its webhook no longer exists")
        return None
    if EVENTS.get(JobStatus(job.status)) != event:
        end("failed", f"the job is {JobStatus(job.status).value}, not {event}")
        return None
    attempt = redis_client.hincrby(key, "attempts", 1)
    redis_client.hset(key, "state", "delivering")
    secret = signing_secret(redis_client, job.owner, settings)
    if not secret:
        end("failed", "no WEBHOOK_SECRET to sign an ownerless job's webhook")
        return None
    try:
        target = resolve_webhook(job.webhook, settings.webhook_allow_private)
        body, headers = build_request(job, event, secret, settings.public_base_url)
        status, retry_after = post(target, body, headers, settings.webhook_timeout)
    except InvalidWebhook as exc:  # e.g. its name resolves to a private address now
        end("failed", f"refused: {exc}")
        return None
    except DeliveryError as exc:
        retry_after, last = None, str(exc)
    else:
        last = f"HTTP {status}"
        if 200 <= status < 300:
            end("delivered", f"{last} on attempt {attempt}", logging.INFO)
            return None
        if not (status in (408, 429) or status >= 500):
            end("failed", f"{last}: not retried" + (" (410 Gone: the receiver wants no more)" if status == 410 else ""))
            return None
    if attempt >= settings.webhook_max_attempts:
        end("failed", f"{last}; gave up after {attempt} attempts")
        return None
    wait = retry_delay(settings, attempt, retry_after)
    redis_client.hset(key, mapping={"state": "queued", "last": last})
    log.info("webhook %s: attempt %d failed (%s); next in %.1fs", msg_id, attempt, last, wait)
    return wait
