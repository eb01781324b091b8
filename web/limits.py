"""Rate limits (Flask-Limiter, counted in the app's Redis) and the cap on queued jobs per owner.

- SUBMIT_RATE_LIMIT (default "2/second;60/minute"): job submissions, the API's and the form's
  together; a form post of several photos (web/albums.py) counts once in the windows shorter than a
  minute and once per photo in the others (so 60/minute is three albums of 20);
- READ_RATE_LIMIT (default "20/second"): the API's reads (a job, its audio and photo, the list),
  together;

each counted per API key, else per browser session, else per client address (the proxy's client
with PROXY_HOPS, which ProxyFix applies). Over a limit: 429 `rate_limited` with Retry-After.
/healthz, /readyz, the pages' GETs and static files are never limited.
MAX_QUEUED_PER_OWNER (checked in web/uploads.py): 429 `too_many_queued`.
"""

from __future__ import annotations

import math
import re
import time

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from limits import parse, parse_many

from shared.redis_conn import limiter_storage
from web import health
from web.auth import current_owner
from web.errors import error_response

SUBMIT_ENDPOINTS = ("api.submit", "pages.submit")
FORM_SUBMIT = "pages.submit"
PER_PHOTO_WINDOW = 60  # seconds: limits over windows this long count a form post's photos
READ_ENDPOINTS = (
    "api.list_jobs",
    "api.get_job",
    "api.job_audio",
    "api.job_image",
    "api.job_subtitles",
    "albums.album_jobs",
)


def split_by_window(value: str) -> tuple[str, str]:
    """A limit string split into its parts shorter than PER_PHOTO_WINDOW and the others."""
    short: list[str] = []
    long: list[str] = []
    for part in filter(None, (p.strip() for p in re.split(r"[,;|]", value))):
        (long if parse(part).get_expiry() >= PER_PHOTO_WINDOW else short).append(part)
    return ";".join(short), ";".join(long)


def form_photo_count() -> int:
    """What a form post costs in the longer windows: its photos (parsing the body once, before the
    view, which then reads the parsed form; anything wrong with the body is the view's to report)."""
    from web.albums import form_photos  # albums -> pages -> ... : imported when first needed

    try:
        return max(1, len(form_photos()))
    except Exception:
        return 1


def _wrap_view(app: Flask, endpoint: str, limit) -> None:
    app.view_functions[endpoint] = limit(app.view_functions[endpoint])


def rate_limit_key() -> str:
    """Whom a request counts against: its owner (key or session), else its client address."""
    return current_owner() or f"addr:{request.remote_addr or 'unknown'}"


def init_limits(app: Flask, settings, redis_client) -> Limiter:
    """One Limiter per app, sharing the app's Redis connection pool (Sentinel-managed when
    REDIS_SENTINELS is set); the limits wrap the views already registered under SUBMIT_ENDPOINTS
    and READ_ENDPOINTS."""
    for name, value in (
        ("SUBMIT_RATE_LIMIT", settings.submit_rate_limit),
        ("READ_RATE_LIMIT", settings.read_rate_limit),
    ):
        try:
            parse_many(value)
        except ValueError:  # Flask-Limiter would log it and quietly limit nothing
            raise RuntimeError(f"{name}={value!r} is not a rate limit such as '2/second;60/minute'") from None
    storage_uri, storage_options = limiter_storage(settings, redis_client)
    limiter = Limiter(
        rate_limit_key,
        app=app,
        storage_uri=storage_uri,
        storage_options=storage_options,
        strategy="fixed-window",
        key_prefix="narrator",
        headers_enabled=False,  # Retry-After is set on a 429 only (no extra Redis read per request)
        swallow_errors=False,  # Redis down: the 503 every other Redis failure gets
    )
    submit = limiter.shared_limit(settings.submit_rate_limit, scope="submit")
    read = limiter.shared_limit(settings.read_rate_limit, scope="read")
    for limit, endpoints in ((submit, SUBMIT_ENDPOINTS), (read, READ_ENDPOINTS)):
        for endpoint in endpoints:
            if endpoint != FORM_SUBMIT:
                _wrap_view(app, endpoint, limit)
    # The same counters (scope "submit"), but a form post of several photos costs one per photo in
    # the windows of a minute or more (fair: a photo is a job), and one per post in the shorter ones
    # (a 20-photo album counted per photo would never pass the default 2/second).
    per_post, per_photo = split_by_window(settings.submit_rate_limit)
    for value, cost in ((per_post, 1), (per_photo, form_photo_count)):
        if value:
            _wrap_view(app, FORM_SUBMIT, limiter.shared_limit(value, scope="submit", cost=cost))
    limiter.exempt(health.bp)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        retry_after = 1
        try:
            hit = limiter.current_limit
            if hit is not None:
                retry_after = max(1, math.ceil(hit.window[0] - time.time()))  # the window's end
        except Exception as error:  # the window's end is a hint; the 429 stands without it
            app.logger.warning("rate limit window unavailable: %s", error)
        return error_response(
            429,
            "rate_limited",
            f"Too many requests (limit: {exc.limit.limit}); retry in {retry_after} s.",
            {"Retry-After": str(retry_after)},
        )

    return limiter
