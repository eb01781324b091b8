"""GET /api/v1/styles: the story styles a job may name (STORY_STYLES, shared/styles.py).

The web app never loads a model: it knows the styles from the same settings the workers read, parses
them once at create_app (a bad value stops the app there, with the message the worker would give)
and checks each submit's `style` against them.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify

from shared.styles import StyleError, Styles, UnknownStyle, from_settings
from web.errors import AppError

bp = Blueprint("styles_api", __name__, url_prefix="/api/v1")
EXTENSION = "narrator_styles"


def init_styles(app: Flask, settings) -> Styles:
    try:
        styles = from_settings(settings)
    except StyleError as exc:
        raise RuntimeError(f"{exc}. The web app and the workers read the same STORY_STYLES.") from None
    app.extensions[EXTENSION] = styles
    app.register_blueprint(bp)
    return styles


def configured() -> Styles:
    return current_app.extensions.get(EXTENSION) or Styles()


def job_style(requested: str | None) -> str | None:
    """The style name a new job records (see Styles.resolve); 400 invalid_style for an unknown one."""
    try:
        return configured().resolve(requested)
    except UnknownStyle as exc:
        raise AppError(400, "invalid_style", str(exc)) from None


@bp.get("/styles")
def list_styles():
    styles = configured()
    return jsonify([{"name": name, "default": name == styles.default} for name in styles.names])
