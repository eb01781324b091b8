"""GET /api/v1/webhooks/secret: the `whsec_...` secret that signs the caller's webhooks.

One secret per owner (an API key, or a browser session), created on the first request and kept
in Redis; every webhook of that owner's jobs is signed with it (Standard Webhooks), so receivers
verify with `standardwebhooks.Webhook(secret).verify(body, headers)`.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from shared.webhooks import owner_secret
from web.auth import CHALLENGE, current_owner
from web.errors import AppError
from web.services import services

bp = Blueprint("webhooks_api", __name__, url_prefix="/api/v1/webhooks")


@bp.get("/secret")
def secret():
    owner = current_owner()
    if owner is None:
        raise AppError(
            401,
            "api_key_required",
            "The webhook secret belongs to an API key: send 'Authorization: Bearer KEY'.",
            {"WWW-Authenticate": CHALLENGE},
        )
    response = jsonify(secret=owner_secret(services().redis, owner))
    response.headers["Cache-Control"] = "no-store"
    return response
