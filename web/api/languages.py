"""GET /api/v1/languages: the languages a job may name (LANGUAGES, shared/languages.py).

The web app never loads a voice: it knows the languages from the same settings the workers read,
parses them once at create_app (a bad value stops the app there, with the message the worker would
give) and checks each submit's `language` against them.
"""

from __future__ import annotations

from flask import current_app, jsonify
from flask_openapi3 import APIBlueprint, OpenAPI, Tag

from shared.languages import LanguageError, Languages, UnknownLanguage, from_settings, language_name
from web.api import contract as c
from web.middleware.errors import AppError

bp = APIBlueprint("languages_api", __name__, url_prefix="/api/v1", operation_id_callback=c.operation_id)
EXTENSION = "narrator_languages"


def init_languages(app: OpenAPI, settings) -> Languages:
    try:
        languages = from_settings(settings)
    except LanguageError as exc:
        raise RuntimeError(f"{exc}. The web app and the workers read the same LANGUAGES.") from None
    app.extensions[EXTENSION] = languages
    app.jinja_env.filters["language_name"] = language_name  # pages name a job's language
    app.register_api(bp)
    return languages


def configured() -> Languages:
    return current_app.extensions.get(EXTENSION) or Languages()


def job_language(requested: str | None) -> str:
    """The language code a new job records (see Languages.resolve); 400 invalid_language for an unknown one."""
    try:
        return configured().resolve(requested)
    except UnknownLanguage as exc:
        raise AppError(400, "invalid_language", str(exc)) from None


@bp.get(
    "/languages",
    tags=[Tag(name="jobs")],
    summary="List the narration languages",
    description="The languages a job may name in `language` (LANGUAGES), in the server's order; exactly one is "
    "the default. The story is written in it and spoken by its MMS-TTS voice.",
    security=c.ANYONE,
    responses={200: c.Languages, **c.API, 503: c.REDIS_DOWN},
)
def list_languages():
    languages = configured()
    return jsonify(
        [{"code": code, "name": language_name(code), "default": code == languages.default} for code in languages.codes]
    )
