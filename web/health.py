"""Liveness (/healthz: the process answers) and readiness (/readyz: Redis and storage answer)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from web.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means "not ready", never a 500
        checks["redis"] = f"unavailable: {exc}"
    try:
        svc.ensure_storage()  # creates the bucket if it was missing at start-up
        svc.storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"unavailable: {exc}"
    failed = [name for name, state in checks.items() if state != "ok"]
    if not failed:
        return jsonify(status="ready", checks=checks)
    current_app.logger.warning("not ready: %s", checks)
    message = " and ".join(failed) + (" is" if len(failed) == 1 else " are") + " unreachable"
    return jsonify(status="unavailable", checks=checks,
                   error={"code": "not_ready", "message": message}), 503
