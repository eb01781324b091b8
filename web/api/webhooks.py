"""/api/v1/webhooks/secret: the `whsec_...` secret that signs the caller's webhooks (GET), and a new
one in its place (POST: rotation).

One secret per owner (an API key, or a browser session), created on the first request and kept
in Redis; every webhook of that owner's jobs is signed with it (Standard Webhooks), so receivers
verify with `standardwebhooks.Webhook(secret).verify(body, headers)`. Revoking a key forgets it.
"""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from shared.webhooks import owner_secret, rotate_secret
from web.api import contract as c
from web.middleware.auth import CHALLENGE, current_owner
from web.middleware.errors import AppError
from web.services import services

bp = APIBlueprint("webhooks_api", __name__, url_prefix="/api/v1/webhooks", operation_id_callback=c.operation_id)


@bp.get(
    "/secret",
    tags=[Tag(name="webhooks")],
    summary="Get your webhook secret",
    description="The `whsec_` secret that signs the webhooks of the caller's jobs (created on first use).",
    security=c.OWNER,
    responses={200: c.WebhookSecret, **c.API, 503: c.REDIS_DOWN},
)
def secret():
    response = jsonify(secret=owner_secret(services().redis, secret_owner()))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post(
    "/secret",
    tags=[Tag(name="webhooks")],
    summary="Rotate your webhook secret",
    description="A new `whsec_` secret for the caller: it signs every delivery from now on, and the old one "
    "no longer signs anything (deliveries already waiting are signed with the new one when they go out).",
    security=c.KEY_HOLDER,
    responses={200: c.WebhookSecret, **c.API, 503: c.REDIS_DOWN},
)
def rotate():
    response = jsonify(secret=rotate_secret(services().redis, secret_owner()))
    response.headers["Cache-Control"] = "no-store"
    return response


def secret_owner() -> str:
    owner = current_owner()
    if owner is None:
        raise AppError(
            401,
            "api_key_required",
            "The webhook secret belongs to an API key: send 'Authorization: Bearer KEY'.",
            {"WWW-Authenticate": CHALLENGE},
        )
    return owner
