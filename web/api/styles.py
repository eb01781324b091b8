"""GET /api/v1/styles: the story styles a job may name (STORY_STYLES, shared/styles.py).

The web app never loads a model: it knows the styles from the same settings the workers read, parses
them once at create_app (a bad value stops the app there, with the message the worker would give)
and checks each submit's `style` against them.
"""

from __future__ import annotations

from flask import current_app, jsonify
from flask_openapi3 import APIBlueprint, OpenAPI, Tag

from shared.styles import StyleError, Styles, UnknownStyle, from_settings
from web.api import contract as c
from web.middleware.errors import AppError

bp = APIBlueprint("styles_api", __name__, url_prefix="/api/v1", operation_id_callback=c.operation_id)
EXTENSION = "narrator_styles"


def init_styles(app: OpenAPI, settings) -> Styles:
    try:
        styles = from_settings(settings)
    except StyleError as exc:
        raise RuntimeError(f"{exc}. The web app and the workers read the same STORY_STYLES.") from None
    app.extensions[EXTENSION] = styles
    app.register_api(bp)
    return styles


def configured() -> Styles:
    return current_app.extensions.get(EXTENSION) or Styles()


def job_style(requested: str | None) -> str | None:
    """The style name a new job records (see Styles.resolve); 400 invalid_style for an unknown one."""
    try:
        return configured().resolve(requested)
    except UnknownStyle as exc:
        raise AppError(400, "invalid_style", str(exc)) from None


@bp.get(
    "/styles",
    tags=[Tag(name="jobs")],
    summary="List the story styles",
    description="The styles a job may name in `style` (STORY_STYLES), in the server's order; exactly one is the "
    "default. Empty when the server has no styles.",
    security=c.ANYONE,
    responses={200: c.Styles, **c.API, 503: c.REDIS_DOWN},
)
def list_styles():
    styles = configured()
    return jsonify([{"name": name, "default": name == styles.default} for name in styles.names])
