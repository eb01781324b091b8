"""Rate limits (Flask-Limiter, counted in the app's Redis) and the cap on queued jobs per owner.

- SUBMIT_RATE_LIMIT (default "2/second;60/minute"): job submissions, the API's and the form's
  together;
- READ_RATE_LIMIT (default "20/second"): the API's reads (a job, its audio and photo, the list),
  together;

each counted per API key, else per browser session, else per client address (the proxy's client
with PROXY_HOPS, which ProxyFix applies). Over a limit: 429 `rate_limited` with Retry-After.
/healthz, /readyz, the pages' GETs and static files are never limited.
MAX_QUEUED_PER_OWNER (checked in web/uploads.py): 429 `too_many_queued`.
"""
from __future__ import annotations

import math
import time

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from limits import parse_many

from shared.redis_conn import limiter_storage
from web.auth import current_owner
from web.errors import error_response

SUBMIT_ENDPOINTS = ("api.submit", "pages.submit")
READ_ENDPOINTS = ("api.list_jobs", "api.get_job", "api.job_audio", "api.job_image")


def rate_limit_key() -> str:
    """Whom a request counts against: its owner (key or session), else its client address."""
    return current_owner() or f"addr:{request.remote_addr or 'unknown'}"


def init_limits(app: Flask, settings, redis_client) -> Limiter:
    """One Limiter per app, sharing the app's Redis connection pool (Sentinel-managed when
    REDIS_SENTINELS is set); the limits wrap the views already registered under SUBMIT_ENDPOINTS
    and READ_ENDPOINTS."""
    for name, value in (("SUBMIT_RATE_LIMIT", settings.submit_rate_limit), ("READ_RATE_LIMIT", settings.read_rate_limit)):
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
            app.view_functions[endpoint] = limit(app.view_functions[endpoint])
    limiter.exempt(app.blueprints["health"])

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        retry_after = 1
        try:
            hit = limiter.current_limit
            if hit is not None:
                retry_after = max(1, math.ceil(hit.window[0] - time.time()))  # the window's end
        except Exception as error:  # the window's end is a hint; the 429 stands without it
            app.logger.warning("rate limit window unavailable: %s", error)
        return error_response(429, "rate_limited",
                              f"Too many requests (limit: {exc.limit.limit}); retry in {retry_after} s.",
                              {"Retry-After": str(retry_after)})

    return limiter
