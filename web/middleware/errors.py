"""One error shape for the API, `{"error": {"code", "message"}}`, and HTML pages for browsers.

Everything a client can send maps to a 4xx; Redis, the broker or storage being down maps to 503.
Only a genuine bug reaches the last-resort handler (500, logged, no traceback to the client).
"""

from __future__ import annotations

import re

import redis
from flask import Flask, Response, jsonify, render_template, request
from kombu.exceptions import OperationalError as BrokerError  # send_task's connection errors
from werkzeug.exceptions import HTTPException, SecurityError

from shared.storage import StorageError, StorageUnavailable

try:  # gunicorn raises its parser's errors (a bad chunk size, a body cut short) from wsgi.input.read()
    from gunicorn.http.errors import NoMoreData, ParseException

    FRAMING_ERRORS: tuple = (ParseException, NoMoreData)
except ImportError:  # pragma: no cover - another WSGI server
    FRAMING_ERRORS = ()


class AppError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _wants_html() -> bool:
    if request.path.startswith("/api/") or request.path in ("/healthz", "/readyz"):
        return False
    # Pages answer in HTML unless the client clearly prefers JSON (ties go to HTML).
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) != "application/json"


def error_response(status: int, code: str, message: str, headers=None):
    if _wants_html():
        body = render_template("error.html", status=status, message=message)
        return body, status, headers or {}
    return jsonify(error={"code": code, "message": message}), status, headers or {}


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(exc: AppError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(SecurityError)
    def _untrusted_host(exc: SecurityError):
        # Raised before any view (TRUSTED_HOSTS, web/app.py check_host): no URL can be built, so no
        # page either; and nothing in it repeats the host name the request gave.
        text = "400 Bad Request: this server does not answer to that host name (TRUSTED_HOSTS).\n"
        return Response(text, status=400, mimetype="text/plain")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Keep headers such as Allow (405) but not the HTML content type of the default page.
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        code = "too_large" if exc.code == 413 else _snake(exc.name or "error")
        message = exc.description or exc.name
        if exc.code == 413:
            limit = app.config.get("MAX_UPLOAD_MB")
            message = f"The upload is larger than the {limit:g} MB limit."
        return error_response(exc.code or 500, code, message, headers)

    def _bad_framing(exc):
        # The request's HTTP framing is broken: the client's fault, never a 500 (usually the
        # uploads' RequestBody has already turned this into a ClientDisconnected, also a 400).
        app.logger.info("malformed request body on %s %s: %s", request.method, request.path, exc)
        return error_response(400, "bad_request", "The request body is malformed or incomplete.")

    for framing_error in FRAMING_ERRORS:
        app.register_error_handler(framing_error, _bad_framing)

    @app.errorhandler(redis.exceptions.RedisError)  # refused, timeout, loading, MISCONF, read-only
    def _redis_down(exc):
        app.logger.warning("redis unavailable: %s", exc)
        return error_response(503, "redis_unavailable", "The job store is unavailable; try again shortly.")

    @app.errorhandler(StorageUnavailable)
    def _storage_down(exc):
        app.logger.warning("storage unavailable: %s", exc)
        return error_response(503, "storage_unavailable", "Storage is unavailable; try again shortly.")

    @app.errorhandler(StorageError)  # any other storage failure is the server's storage, not the client
    def _storage_failed(exc):
        app.logger.error("storage error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, "storage_unavailable", "Storage is unavailable; try again shortly.")

    @app.errorhandler(BrokerError)
    def _broker_down(exc):
        app.logger.warning("broker unavailable: %s", exc)
        return error_response(503, "queue_unavailable", "The job queue is unavailable; try again shortly.")

    @app.errorhandler(Exception)
    def _last_resort(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "Something went wrong on our side.")
