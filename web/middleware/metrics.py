"""GET /metrics for Prometheus: requests, latency, submitted and rejected jobs, the queue and workers.

Labels never carry a raw path, a job id or an owner: requests are counted by route template
(`/api/v1/jobs/<job_id>`, or `<unmatched>`), rejected submits by error code. The queue depth and
worker counts are read from Redis at scrape time, so every web process reports the same truth.

Under gunicorn (web/gunicorn_conf.py sets PROMETHEUS_MULTIPROC_DIR) each process writes its counts
to files there and a scrape, answered by any one process, adds them all up (prometheus_client's
multiprocess mode). Elsewhere (flask run, tests) the process's own registry is scraped.

METRICS_TOKEN (optional): when set, a scrape must send `Authorization: Bearer <token>`. The scrape
is answered before the API-key check and the rate limits run, so it is neither taken for an API
key nor counted against anyone.
"""

from __future__ import annotations

import functools
import hmac
import os
import time

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from werkzeug.exceptions import RequestEntityTooLarge

from shared.jobs import workers
from web.middleware.errors import AppError
from web.services import services

bp = Blueprint("metrics", __name__)
ENDPOINT = "metrics.metrics"
SUBMITS = {"api.submit": "api", "pages.submit": "form"}
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# A form page shows its error in HTML, so its code is not in the body; these statuses have one meaning there.
HTML_CODES = {403: "cross_site_request", 413: "too_large", 429: "rate_limited"}

REGISTRY = CollectorRegistry()  # this process's own (not the default one, which also gets workers' metrics in tests)
REQUESTS = Counter(
    "narrator_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "narrator_http_request_duration_seconds",
    "Seconds to answer a request, by route template",
    ["route", "method"],
    registry=REGISTRY,
)
SUBMITTED = Counter(
    "narrator_jobs_submitted",
    "Jobs accepted (202 from the API, a redirect from the form)",
    ["source"],
    registry=REGISTRY,
)
REJECTED = Counter("narrator_jobs_rejected", "Submits refused, by error code", ["source", "code"], registry=REGISTRY)


class RedisCollector:
    """Read at scrape time: the queue and the workers' heartbeats (what /readyz shows)."""

    def __init__(self, svc):
        self.svc = svc

    def collect(self):
        up = GaugeMetricFamily("narrator_redis_up", "1 when the job store answered this scrape")
        try:
            queued = self.svc.jobs.queued_count()
            counts = workers.worker_counts(self.svc.redis)
        except Exception as exc:  # a scrape still answers; the gauges below are simply absent
            current_app.logger.warning("metrics: redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("narrator_queue_depth", "Jobs waiting in the queue", value=queued)
        yield GaugeMetricFamily("narrator_workers_live", "Workers whose heartbeat is current", value=counts["live"])
        yield GaugeMetricFamily(
            "narrator_workers_ready", "Live workers with their models loaded (idle or busy)", value=counts["ready"]
        )
        yield GaugeMetricFamily("narrator_workers_busy", "Live workers running a batch", value=counts["busy"])


def operator_token_sent() -> bool:
    """The request carries METRICS_TOKEN (configured): it comes from the operator's tools."""
    token = services().settings.metrics_token
    sent = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


@bp.get("/metrics")
def metrics():
    if services().settings.metrics_token and not operator_token_sent():
        return (
            jsonify(
                error={"code": "invalid_metrics_token", "message": "Send 'Authorization: Bearer <METRICS_TOKEN>'."}
            ),
            401,
            {"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    scrape = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(scrape)  # every gunicorn process's files, live or exited
    else:
        scrape.register(REGISTRY)
    scrape.register(RedisCollector(services()))
    body = generate_latest(scrape)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"})


def remember_rejection(code: str) -> None:
    """Why this request's submit was refused, for `narrator_jobs_rejected` (a form's page carries no code)."""
    g.narrator_reject_code = code


def note_rejection(create_job):
    """Wraps web/uploads.create_job_from_request: remembers why a submit was refused, which the
    form's page (HTML, status only) does not say."""

    @functools.wraps(create_job)
    def wrapper(*args, **kwargs):
        try:
            return create_job(*args, **kwargs)
        except AppError as exc:
            remember_rejection(exc.code)
            raise
        except RequestEntityTooLarge:
            remember_rejection("too_large")
            raise

    return wrapper


def _start():
    g.narrator_started = time.perf_counter()
    if request.endpoint == ENDPOINT:
        return metrics()  # before web/middleware/auth.py and the rate limits (see the top)
    return None


def _reject_code(response) -> str:
    code = g.get("narrator_reject_code")
    if not code and response.is_json:
        error = (response.get_json(silent=True) or {}).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    return str(code or HTML_CODES.get(response.status_code) or f"http_{response.status_code}")


def _record(response):
    try:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(route, method, str(response.status_code)).inc()
        started = g.get("narrator_started")
        if started is not None:
            LATENCY.labels(route, method).observe(time.perf_counter() - started)
        source = SUBMITS.get(request.endpoint or "")
        if source is not None:
            if response.status_code == 202 or (source == "form" and response.status_code == 303):
                SUBMITTED.labels(source).inc()
            elif response.status_code >= 400:
                REJECTED.labels(source, _reject_code(response)).inc()
    except Exception as exc:  # counting must never cost a client its answer
        current_app.logger.warning("metrics: could not record a request: %s", exc)
    return response


def init_metrics(app: Flask) -> None:
    app.register_blueprint(bp)
    # First of the before_request hooks: the latency includes the API-key check and the rate limits.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_record)
