"""Rate limits (fixed windows counted in the app's Redis) and the cap on queued jobs per owner.

- SUBMIT_RATE_LIMIT (default "2/second;60/minute"): job submissions, the API's and the form's
  together; a form post of several photos (web/pages/albums.py) counts once in the windows shorter than a
  minute and once per photo in the others (so 60/minute is three albums of 20);
- READ_RATE_LIMIT (default "20/second"): the API's reads (a job, its audio and photo, the list),
  together;

each counted per API key, else per browser session, else per client address (the proxy's client
with PROXY_HOPS, which ProxyFix applies; an IPv6 client by its /64);
- SUBMIT_ADDRESS_RATE_LIMIT (default "5/second;200/minute"): every submission without an API key
  also counts per client address, so a new session per form post (or no cookie) gets no fresh
  allowance. Keys are the operator's to hand out (`keys create`): several behind one address each
  keep their own budget.
 Over a limit: 429 `rate_limited` with Retry-After, the
seconds to the end of the window. /healthz, /readyz, the pages' GETs and static files are never
limited. MAX_QUEUED_PER_OWNER (checked in web/jobs/submit.py): 429 `too_many_queued`.

Counting: one round trip per request, `INCRBY` and `EXPIRE ... NX` per limit in one pipeline (no
script: this runs on every poll). Windows are aligned to the clock, the counter's key carrying the
window's number (unix time // window), so a new window is a new key and nothing is ever reset; the
web hosts' clocks must agree (NTP), as the leases already require of the Redis hosts. A refused
request counts too, in every window of its scope.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from flask import Flask

from web.middleware.auth import client_network, current_owner
from web.middleware.errors import AppError

SUBMIT_ENDPOINTS = ("api.submit", "pages.submit", "api.retry")  # a retry is a new job too
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
KEY_PREFIX = "ratelimit"

# The notation the `limits` package (Flask-Limiter's) reads, which these settings have always used:
# "N/unit", "N per unit" or "N/M units", several joined by "," ";" or "|"; a month is 30 days and a
# year 12 of them.
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400, "year": 360 * 86400}
ONE_LIMIT = re.compile(r"\s*([0-9]+)\s*(?:/|per)\s*([0-9]+)?\s*([a-z]+)\s*", re.IGNORECASE)
SEPARATORS = re.compile(r"[,;|]")


@dataclass(frozen=True)
class Rate:
    amount: int
    window: int  # seconds
    text: str  # as the 429's message has always put it: "2 per 1 second"

    def window_end(self, now: float) -> float:
        return (now // self.window + 1) * self.window


def parse_limits(value: str) -> list[Rate]:
    """Raises ValueError unless every part is a limit."""
    rates = []
    for part in SEPARATORS.split(value):
        match = ONE_LIMIT.fullmatch(part)
        unit = match[3].lower() if match else ""
        unit = unit if unit in UNITS else unit.removesuffix("s")  # "seconds", "2 minutes"
        if not match or unit not in UNITS:
            raise ValueError(f"not a rate limit: {part!r}")
        amount, multiples = int(match[1]), int(match[2] or 1)
        if multiples < 1:
            raise ValueError(f"an empty window: {part!r}")
        rates.append(Rate(amount, multiples * UNITS[unit], f"{amount} per {multiples} {unit}"))
    return rates


class RateLimiter:
    """Fixed-window counters in Redis: the app's own client, so they follow a Sentinel master."""

    def __init__(self, client: redis.Redis, prefix: str = KEY_PREFIX):
        self.redis, self.prefix = client, prefix

    def key(self, scope: str, who: str, rate: Rate, number: int) -> str:
        return f"{self.prefix}:{scope}:{who}:{rate.amount}/{rate.window}:{number}"

    def hit(self, charges: list[tuple[str, str, Rate, int]]) -> tuple[Rate, int] | None:
        """Count each (scope, who, rate, cost); None if all hold, else the broken limit whose window
        ends last (retrying before then would only be refused again) and the seconds until it ends.
        Redis errors propagate: web/middleware/errors.py answers them with 503 `redis_unavailable`."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for scope, who, rate, cost in charges:
            key = self.key(scope, who, rate, int(now // rate.window))
            pipe.incrby(key, cost)
            pipe.expire(key, rate.window, nx=True)  # outlives its window, which ends within that
        counts = pipe.execute()[::2]
        broken = [rate for (_, _, rate, _), count in zip(charges, counts, strict=True) if count > rate.amount]
        if not broken:
            return None
        rate = max(broken, key=lambda rate: rate.window_end(now))
        return rate, max(1, math.ceil(rate.window_end(now) - now))


def split_by_window(rates: list[Rate]) -> tuple[list[Rate], list[Rate]]:
    """The limits shorter than PER_PHOTO_WINDOW and the others."""
    return [r for r in rates if r.window < PER_PHOTO_WINDOW], [r for r in rates if r.window >= PER_PHOTO_WINDOW]


def form_photo_count() -> int:
    """What a form post costs in the longer windows: its photos (parsing the body once, before the
    view, which then reads the parsed form; anything wrong with the body is the view's to report)."""
    from web.pages.albums import form_photos  # albums -> pages -> ... : imported when first needed

    try:
        return max(1, len(form_photos()))
    except Exception:
        return 1


def rate_limit_key() -> str:
    """Whom a request counts against: its owner (key or session), else its client network."""
    return current_owner() or client_network()


def _limited(
    view,
    limiter: RateLimiter,
    scope: str,
    rates: list[Rate],
    per_photo: Sequence[Rate] = (),
    per_address: Sequence[Rate] = (),
):
    # Wrapping the view (not a before_request hook) keeps the order requests always had: the key
    # check, then the pages' origin check, and only then the count.
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        who = rate_limit_key()
        charges = [(scope, who, rate, 1) for rate in rates]
        if per_photo:
            photos = form_photo_count()
            charges += [(scope, who, rate, photos) for rate in per_photo]
        if not who.startswith("key:"):
            charges += [(f"{scope}-address", client_network(), rate, 1) for rate in per_address]
        broken = limiter.hit(charges)
        if broken is not None:
            rate, retry_after = broken
            raise AppError(
                429,
                "rate_limited",
                f"Too many requests (limit: {rate.text}); retry in {retry_after} s.",
                {"Retry-After": str(retry_after)},
            )
        return view(*args, **kwargs)

    return wrapper


def init_limits(app: Flask, settings, redis_client: redis.Redis) -> RateLimiter:
    """Wraps the views already registered under SUBMIT_ENDPOINTS and READ_ENDPOINTS; a malformed
    limit stops the app here rather than limiting nothing."""
    parsed = {}
    for name, value in (
        ("SUBMIT_RATE_LIMIT", settings.submit_rate_limit),
        ("READ_RATE_LIMIT", settings.read_rate_limit),
        ("SUBMIT_ADDRESS_RATE_LIMIT", settings.submit_address_rate_limit),
    ):
        try:
            parsed[name] = parse_limits(value)
        except ValueError:
            raise RuntimeError(f"{name}={value!r} is not a rate limit such as '2/second;60/minute'") from None
    limiter = RateLimiter(redis_client)
    submit, read, by_address = (
        parsed["SUBMIT_RATE_LIMIT"],
        parsed["READ_RATE_LIMIT"],
        parsed["SUBMIT_ADDRESS_RATE_LIMIT"],
    )
    for endpoint in READ_ENDPOINTS:
        app.view_functions[endpoint] = _limited(app.view_functions[endpoint], limiter, "read", read)
    for endpoint in SUBMIT_ENDPOINTS:
        view = app.view_functions[endpoint]
        if endpoint == FORM_SUBMIT:
            # The same counters, but a form post of several photos costs one per photo in the windows
            # of a minute or more (fair: a photo is a job), and one per post in the shorter ones (a
            # 20-photo album counted per photo would never pass the default 2/second).
            per_post, per_photo = split_by_window(submit)
            app.view_functions[endpoint] = _limited(view, limiter, "submit", per_post, per_photo, by_address)
        else:
            app.view_functions[endpoint] = _limited(view, limiter, "submit", submit, per_address=by_address)
    return limiter
