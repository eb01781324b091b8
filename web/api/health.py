"""Liveness (/healthz: the process answers) and readiness (/readyz: Redis and storage answer, plus
what an operator needs to know about the workers: how many are alive, the queue depth and the last
model-load error)."""

from __future__ import annotations

from flask import current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from shared.jobs import workers
from shared.jobs.schema import iso
from web.api import contract as c
from web.api.styles import configured as configured_styles
from web.middleware.metrics import operator_token_sent
from web.services import services

HIDDEN_MODEL_ERROR = "a worker could not load its models: its log, or /readyz with METRICS_TOKEN, says why"

bp = APIBlueprint("health", __name__, operation_id_callback=c.operation_id)
HEALTH = [Tag(name="health")]


@bp.get("/healthz", tags=HEALTH, summary="Liveness", responses={200: c.Alive, **c.SERVER})
def healthz():
    return jsonify(status="ok")


@bp.get(
    "/readyz",
    tags=HEALTH,
    summary="Readiness",
    description="Redis and storage answer; also the live workers, the queue depth and the last model-load error "
    "(its text only with `Authorization: Bearer <METRICS_TOKEN>`).",
    responses={200: c.Ready, 503: c.NotReady, **c.SERVER},
)
def readyz():
    svc = services()
    checks: dict[str, str] = {}
    styles = configured_styles()  # the web app and its workers read the same STORY_STYLES
    story = {"adapter": bool(svc.settings.story_adapter), "styles": styles.names, "default_style": styles.default}
    body: dict = {"story": story}
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
        # Counts only: worker host names and process ids are nobody else's business.
        body["workers"] = workers.worker_counts(svc.redis)
        body["queue"] = {"queued": svc.jobs.queued_count()}
        error = workers.last_model_error(svc.redis)
        # The raw message may name private things (a bucket, a host): the operator's, with METRICS_TOKEN.
        message = error and (error["message"] if operator_token_sent() else HIDDEN_MODEL_ERROR)
        body["last_model_error"] = {"message": message, "at": iso(error["at"])} if error else None
    except Exception as exc:  # any failure means "not ready", never a 500; details stay in the log
        current_app.logger.warning("readyz: redis: %s", exc)
        checks["redis"] = "unavailable"
    try:
        svc.ensure_storage()  # creates the bucket if it was missing at start-up
        svc.storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        current_app.logger.warning("readyz: storage: %s", exc)
        checks["storage"] = "unavailable"
    failed = [name for name, state in checks.items() if state != "ok"]
    if not failed:
        # The web can take jobs; without a ready worker they wait in the queue, which is worth saying.
        warnings = [] if body["workers"]["ready"] else ["no worker is ready: jobs wait in the queue"]
        return jsonify(status="ready", checks=checks, warnings=warnings, **body)
    message = " and ".join(failed) + (" is" if len(failed) == 1 else " are") + " unreachable"
    return jsonify(status="unavailable", checks=checks, error={"code": "not_ready", "message": message}, **body), 503
