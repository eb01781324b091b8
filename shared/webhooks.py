"""Signed webhooks: a POST to the job's `webhook` URL when the job ends, per Standard Webhooks.

- Submit: `check_webhook_url` accepts an https URL whose host resolves only to public addresses
  (http, and private, loopback or link-local addresses too, only with WEBHOOK_ALLOW_PRIVATE).
  The check runs again at every delivery attempt, and the request goes to the addresses that
  check resolved (DNS may have changed since the submit; no second lookup can slip in another).
- Finish: whoever ends a job (the GPU worker, its reaper, a cancel) calls `notify_finished`, which
  enqueues one `deliver_webhook` message on the `webhooks` queue per job and final event (a Redis
  marker set with HSETNX first, so calling it twice sends nothing more). Publishing is all the
  finishing process does: the light webhooks worker (web/tasks.py) makes the HTTP requests.
- Delivery: `deliver` makes one attempt: body `{"type": "job.succeeded" | "job.failed" |
  "job.canceled", "timestamp": <when the job ended>, "data": <the job as GET shows it>}`, headers
  `webhook-id` (the same on every attempt), `webhook-timestamp` and `webhook-signature` (HMAC-SHA256
  with the owner's `whsec_` secret, or WEBHOOK_SECRET for an ownerless job). 2xx: delivered (and
  never sent again); 408, 429, 5xx, timeouts and connection errors: tried again with exponential
  backoff; any other answer (3xx, 4xx, 410 Gone): the series stops.

Nothing here imports Flask, torch or the worker package.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import logging
import math
import random
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.jobs.public import public_job
from shared.jobs.schema import Job, JobStatus, iso
from shared.queue import PUBLISH_RETRY

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = "webhooks"
DELIVER_TASK = "deliver_webhook"
MAX_URL_LENGTH = 2048
EVENTS = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed", JobStatus.CANCELED: "job.canceled"}
SECRET_PREFIX = "whsec_"
USER_AGENT = "narrator-webhooks/1"


class InvalidWebhook(ValueError):
    """A webhook URL we will not call; the message is meant for the user."""


class DeliveryError(Exception):
    """One attempt failed in a way worth retrying (connection refused or reset, timeout, DNS)."""


class DeliveryPolicy(BaseSettings):
    """How the webhooks worker retries: WEBHOOK_MAX_ATTEMPTS, WEBHOOK_RETRY_SECONDS (the first
    wait, doubled after each failure), WEBHOOK_RETRY_MAX_SECONDS (the longest wait; it stays below
    the Redis broker's one-hour visibility timeout, so a waiting retry is never handed out twice)
    and WEBHOOK_TIMEOUT (seconds one attempt may take, connect to answer)."""

    model_config = SettingsConfigDict(env_file=".env", env_prefix="WEBHOOK_", extra="ignore", case_sensitive=False)

    max_attempts: int = Field(12, ge=1, le=50)
    retry_seconds: float = Field(5, gt=0)
    retry_max_seconds: float = Field(1800, gt=0, le=3000)
    timeout: float = Field(10, gt=0, le=60)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): exponential, +-10% jitter,
        at least what the receiver's Retry-After asked for, never above the cap."""
        wait = self.retry_seconds * 2 ** min(attempt - 1, 30) * random.uniform(0.9, 1.1)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.retry_max_seconds)


# --- URLs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the addresses it may be called at."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses (tests replace this to fake DNS). Raises socket.gaierror."""
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped:
        return addr.ipv4_mapped
    if addr.sixtofour:
        return addr.sixtofour
    if addr.teredo:
        return addr.teredo[1]
    if addr in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to this address, or None when it may."""
    addr = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            problem = address_problem(str(inner), allow_private)
            if problem:
                return problem
    if addr.is_multicast or addr.is_unspecified:
        return f"{addr} is not a host address"
    if not allow_private and not addr.is_global:
        kind = (
            "a loopback"
            if addr.is_loopback
            else "a link-local"
            if addr.is_link_local
            else "a private"
            if addr.is_private
            else "a reserved"
        )
        return f"{addr} is {kind} address (allowed only with WEBHOOK_ALLOW_PRIVATE=true)"
    return None


def _parse(url: str, allow_private: bool) -> tuple[str, str, int, str]:
    """Check the URL's form (no DNS); returns (scheme, ascii host, port, path and query)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidWebhook("The webhook URL is empty.")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhook(f"The webhook URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidWebhook("The webhook URL may not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidWebhook("The webhook URL is not a valid URL (check its host and port).") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        hint = "" if allow_private or scheme != "http" else " (http is allowed only with WEBHOOK_ALLOW_PRIVATE=true)"
        raise InvalidWebhook(f"The webhook URL must start with https://{hint}.")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook("The webhook URL may not contain a user name or password.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidWebhook("The webhook URL has no host name.")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidWebhook("The webhook URL's host name is not a valid domain name.") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not path.isascii():
        raise InvalidWebhook("The webhook URL's path and query must be ASCII: percent-encode other characters.")
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve_webhook(url: str, allow_private: bool) -> Target:
    """Check a webhook URL and resolve its host: InvalidWebhook when it may not be called (a bad
    form, or any of its addresses is private, loopback, link-local, reserved or multicast unless
    allowed), DeliveryError when its name does not resolve just now."""
    scheme, host, port, path = _parse(url, allow_private)
    literal = True
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        literal = False
        try:
            addresses = resolve(host, port)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise DeliveryError(f"the host name {host} does not resolve ({exc})") from None
        if not addresses:
            raise DeliveryError(f"the host name {host} has no address") from None
    for address in addresses:
        problem = address_problem(address, allow_private)
        if problem:
            where = "" if literal else f" ({host} resolves to it)"
            raise InvalidWebhook(f"The webhook URL may not point at this address: {problem}{where}.")
    return Target(url.strip(), scheme, host, port, path, tuple(addresses))


def check_webhook_url(url: str, allow_private: bool) -> str:
    """The URL to store (stripped) when a webhook may be sent to it; raises InvalidWebhook with a
    message for the user otherwise, a name that does not resolve included."""
    try:
        return resolve_webhook(url, allow_private).url
    except DeliveryError as exc:
        raise InvalidWebhook(f"The webhook URL cannot be used: {exc}.") from None


def webhook_for_submit(raw: str | None, owner: str | None, settings) -> str | None:
    """The submit's `webhook` field: None when absent or blank, else the checked URL. An ownerless
    job's webhook is signed with WEBHOOK_SECRET, so without one it is refused."""
    if raw is None or not raw.strip():
        return None
    url = check_webhook_url(raw, settings.webhook_allow_private)
    if owner is None and not settings.webhook_secret:
        raise InvalidWebhook(
            "Webhooks need an API key here: this server has no WEBHOOK_SECRET to sign "
            "the webhooks of requests without one."
        )
    return url


# --- secrets --------------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks symmetric secret: 32 random bytes, base64, prefixed `whsec_`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(owner: str) -> str:
    return f"webhook:secret:{owner}"


def owner_secret(redis_client, owner: str) -> str:
    """The owner's signing secret, created on first use (SET NX: concurrent callers agree)."""
    key = secret_key(owner)
    redis_client.set(key, new_secret(), nx=True)
    value = redis_client.get(key)
    return value.decode() if isinstance(value, bytes) else value


def signing_secret(redis_client, owner: str | None, settings) -> str | None:
    return owner_secret(redis_client, owner) if owner else settings.webhook_secret


# --- enqueueing -----------------------------------------------------------------------------------


def webhook_id(job_id: str, event: str) -> str:
    """The same for every attempt of one job's event; no '.' (the spec's signed content is
    `id.timestamp.body`), and job ids are [A-Za-z0-9_-]."""
    return f"msg_{job_id}_{event.rsplit('.', 1)[-1]}"


def delivery_key(job_id: str, event: str) -> str:
    """A hash per job and event: state (queued | delivering | delivered | failed), attempts, last."""
    return f"webhook:{job_id}:{event}"


def notify_finished(celery, store, jobs: Iterable[Job | str]) -> list[str]:
    """For each job that has a webhook and has finished, enqueue its delivery, once: a job already
    enqueued is skipped (HSETNX marker). `jobs`: the records as the caller wrote them (nothing is
    read again), or ids to read. Never raises: a job whose message could not be published is
    logged and its marker removed, so a later call can enqueue it. Returns the ids enqueued."""
    sent = []
    for item in jobs:
        job_id = item if isinstance(item, str) else item.id
        try:
            job = store.get(item) if isinstance(item, str) else item
            if job is None or not job.webhook or not JobStatus(job.status).finished:
                continue
            event = EVENTS[JobStatus(job.status)]
            key = delivery_key(job.id, event)
            pipe = store.redis.pipeline(transaction=True)
            pipe.hsetnx(key, "state", "queued")
            pipe.expire(key, store.ttl)
            if not pipe.execute()[0]:
                continue  # enqueued before
            try:
                celery.send_task(
                    DELIVER_TASK,
                    args=[job.id, event],
                    queue=WEBHOOK_QUEUE,
                    task_id=webhook_id(job.id, event),
                    retry=True,
                    retry_policy=PUBLISH_RETRY,
                )
            except Exception:
                store.redis.delete(key)
                raise
            sent.append(job.id)
        except Exception as exc:  # a webhook must never break the path that ended the job
            log.warning("could not enqueue the webhook of job %s: %s: %s", job_id, type(exc).__name__, exc)
    return sent


# --- one delivery attempt -------------------------------------------------------------------------


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


def deliver(redis_client, store, settings, policy: DeliveryPolicy, job_id: str, event: str) -> float | None:
    """One attempt at delivering a job's final event. Returns the seconds to wait before the next
    attempt, or None when the series is over (delivered, refused, out of attempts, or another
    copy of this message is already at it)."""
    key = delivery_key(job_id, event)
    state = redis_client.hget(key, "state")
    state = state.decode() if isinstance(state, bytes) else state
    if state in ("delivered", "failed"):
        return None  # never twice: a duplicate message finds the series over
    lock, token = key + ":lock", secrets.token_hex(8)
    if not redis_client.set(lock, token, nx=True, ex=int(policy.timeout) + 30):
        log.info("webhook %s: another attempt is in flight; this copy stops", webhook_id(job_id, event))
        return None
    try:
        return _attempt(redis_client, store, settings, policy, job_id, event, key)
    finally:
        redis_client.register_script(_UNLOCK_LUA)(keys=[lock], args=[token])


def _attempt(redis_client, store, settings, policy, job_id, event, key) -> float | None:
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
        status, retry_after = post(target, body, headers, policy.timeout)
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
    if attempt >= policy.max_attempts:
        end("failed", f"{last}; gave up after {attempt} attempts")
        return None
    wait = policy.delay(attempt, retry_after)
    redis_client.hset(key, mapping={"state": "queued", "last": last})
    log.info("webhook %s: attempt %d failed (%s); next in %.1fs", msg_id, attempt, last, wait)
    return wait
