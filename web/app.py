"""The web front end: `gunicorn "web.app:create_app()"` or `flask --app web.app run`.

It validates uploads, stores them, records jobs and enqueues by task name. It never imports the
worker package or torch; the models live only in the GPU workers.
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, request
from flask.helpers import get_debug_flag
from flask.json.provider import DefaultJSONProvider
from flask_openapi3 import Info, OpenAPI
from werkzeug.exceptions import SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.sansio.utils import host_is_trusted

from shared.settings import Settings, get_settings
from shared.storage import StorageError
from web.api import contract, docs, health, jobs, languages, styles, webhooks
from web.keys_cli import keys
from web.middleware import auth
from web.middleware.errors import register_error_handlers
from web.middleware.limits import init_limits
from web.middleware.metrics import init_metrics
from web.pages import albums
from web.pages import jobs as pages
from web.services import Services

# Room for multipart framing and the small form fields next to a photo of exactly MAX_UPLOAD_MB.
FORM_OVERHEAD = 64 * 1024
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _host_name(name: str) -> str:
    """A trusted name as a Host header carries it: an IPv6 address in brackets, in its short form."""
    try:
        return f"[{ipaddress.IPv6Address(name.strip('[]')).compressed}]"
    except ValueError:
        return name


def trusted_hosts(settings: Settings) -> list[str] | None:
    """TRUSTED_HOSTS (None: any host). Empty: the host of PUBLIC_BASE_URL, else the specific address
    BIND names; and loopback, which health checks and `make up` use."""
    names = [name.strip().lower() for name in settings.trusted_hosts.split(",") if name.strip()]
    if "*" in names:
        return None
    if not names and settings.public_base_url:
        names = [urlsplit(settings.public_base_url).hostname or ""]
    if not names and settings.bind.strip("[]") not in ("0.0.0.0", "::", ""):
        names = [settings.bind]
    return [*dict.fromkeys([*(_host_name(n) for n in names if n), *LOOPBACK_NAMES])]


def host_allowed(host: str, trusted: list[str]) -> bool:
    """Whether a Host header ("name[:port]", "[v6]:port") names one of `trusted`. Werkzeug's own
    check (Flask's TRUSTED_HOSTS) cuts every trusted name at its first ":", so it can match no IPv6
    address: those are compared here, names by werkzeug."""
    if host.startswith("["):
        return _host_name(host[: host.find("]") + 1]) in trusted
    return host_is_trusted(host, [name for name in trusted if not name.startswith("[")])


def check_host(trusted: list[str]):
    """A before-request hook, first of all: another Host header is a 400 before any view or redirect."""

    def check() -> None:
        if not host_allowed(request.host.lower(), trusted):  # the Host header, else the server's own name
            raise SecurityError("untrusted host")

    return check


# Blueprints whose answers do not depend on who asks (static files have no blueprint).
SAME_FOR_EVERYONE = frozenset({"static", "health", "openapi", "metrics", "styles_api", "languages_api"})
SESSION_DAYS = 30  # a browser keeps its session (and so its list of stories) this long after its last visit

NO_SECRET_KEY = (
    "SECRET_KEY is not set: it signs the browser-session cookies that own the web form's jobs. "
    "Set it in the environment or in .env to a long random value, e.g. "
    "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') "
    "(`make up` writes one to .env when it is missing). "
    "For local development only, `flask --app web.app run --debug` makes up a temporary one."
)


class OrderedJSON(DefaultJSONProvider):
    sort_keys = False  # keep the job's fields in their documented order


def secret_key(settings: Settings, app: Flask) -> str:
    """SECRET_KEY is required; the one exception is Flask's debug mode (FLASK_DEBUG=1, as
    `flask run --debug` sets), which gets a random key per process and a warning."""
    if settings.secret_key:
        if len(settings.secret_key) < 16:
            app.logger.warning(
                "SECRET_KEY is short (%d characters): use 32 or more random characters", len(settings.secret_key)
            )
        return settings.secret_key
    if get_debug_flag():
        app.logger.warning("SECRET_KEY is not set: debug mode uses a random one; sessions end with the process")
        return secrets.token_urlsafe(32)
    raise RuntimeError(NO_SECRET_KEY)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    # Flask, with the OpenAPI document generated from the views' models (web/api/contract.py); no UI of its own.
    app = OpenAPI(
        __name__,
        info=Info(title="Photo stories API", version="1"),
        doc_ui=False,
        validation_error_status=400,
        validation_error_callback=contract.validation_error,
    )
    # `/jobs//x` would otherwise get a redirect to the merged path built from the Host header,
    # which any client sets: no answer names a host the request chose.
    app.url_map.merge_slashes = False
    app.config.update(
        MAX_UPLOAD_MB=settings.max_upload_mb,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + FORM_OVERHEAD,  # werkzeug stops reading past it
        # Werkzeug also checks each chunk it parses against this, file parts included (it reads
        # 64 KiB at a time plus what is left over): it must stay well above that, or every real
        # photo gets a 413. The non-file fields are tiny either way.
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        MAX_FORM_PARTS=16,  # the form's post raises this and MAX_CONTENT_LENGTH for its photos (web/pages/albums.py)
        SECRET_KEY=secret_key(settings, app),
        SESSION_COOKIE_NAME=auth.SESSION_COOKIE,  # __Host- prefixed over https (auth.SessionCookies)
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",  # not sent with other sites' POSTs (the pages check Origin too)
        SESSION_COOKIE_SECURE=(settings.public_base_url or "").lower().startswith("https:"),
        PERMANENT_SESSION_LIFETIME=timedelta(days=SESSION_DAYS),
    )
    if (trusted := trusted_hosts(settings)) is not None:
        app.before_request(check_host(trusted))
    app.json = OrderedJSON(app)
    app.session_interface = auth.SessionCookies()
    if settings.proxy_hops:
        hops = settings.proxy_hops
        # Flask's documented way to add WSGI middleware, which mypy reads as replacing a method.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )

    styles.init_styles(app, settings)  # GET /api/v1/styles; a bad STORY_STYLES stops the app here
    languages.init_languages(app, settings)  # GET /api/v1/languages; likewise LANGUAGES
    services = Services.build(settings)
    app.extensions["narrator"] = services
    try:
        services.ensure_storage()  # create the bucket at start-up if missing
    except StorageError as exc:  # still serve: /readyz reports it and later requests retry
        app.logger.warning("storage not ready at start-up: %s", exc)

    register_error_handlers(app)
    app.register_api(jobs.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(albums.bp)  # several photos per form post (before init_limits: it limits its feed)
    app.register_api(health.bp)
    app.cli.add_command(keys)
    # Who is asking comes first (a bad key is a 401 before anything else), then the rate limits.
    app.before_request(auth.authenticate)
    app.extensions["narrator_limiter"] = init_limits(app, settings, services.redis)
    app.register_api(webhooks.bp)  # GET and POST /api/v1/webhooks/secret
    init_metrics(app)  # GET /metrics for Prometheus (web/middleware/metrics.py)
    app.register_api(docs.bp)  # /api/v1/openapi.json, /api/docs

    @app.after_request
    def _security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html":
            # Audio may come from a presigned S3 URL on another host; everything else is ours.
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; media-src 'self' https: http:; img-src 'self' data:; "
                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
            )
        if (request.blueprint or "static") not in SAME_FOR_EVERYONE:
            # What the caller's key or session may see: no shared cache keeps it, and no browser
            # cache hands one caller's answer to another (answers that set their own stay cacheable,
            # privately: audio, photos, subtitles).
            response.headers.setdefault("Cache-Control", "private, no-store")
            response.vary.update(("Authorization", "Cookie"))
        return response

    return app
