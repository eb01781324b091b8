"""The web front end: `gunicorn "web.app:create_app()"` or `flask --app web.app run`.

It validates uploads, stores them, records jobs and enqueues by task name. It never imports the
worker package or torch; the models live only in the GPU workers.
"""
from __future__ import annotations

from typing import Optional

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.settings import Settings, get_settings
from shared.storage import StorageError
from web import api, health, pages
from web.errors import register_error_handlers
from web.services import Services

# Room for multipart framing and the small form fields next to a photo of exactly MAX_UPLOAD_MB.
FORM_OVERHEAD = 64 * 1024


def create_app(settings: Optional[Settings] = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.update(
        MAX_UPLOAD_MB=settings.max_upload_mb,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + FORM_OVERHEAD,  # werkzeug stops reading past it
        # Werkzeug also checks each chunk it parses against this, file parts included (it reads
        # 64 KiB at a time plus what is left over): it must stay well above that, or every real
        # photo gets a 413. The non-file fields are tiny either way.
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        MAX_FORM_PARTS=16,
    )
    app.json.sort_keys = False  # keep the job's fields in their documented order
    if settings.proxy_hops:
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)

    services = Services.build(settings)
    app.extensions["narrator"] = services
    try:
        services.ensure_storage()  # create the bucket at start-up if missing
    except StorageError as exc:  # still serve: /readyz reports it and later requests retry
        app.logger.warning("storage not ready at start-up: %s", exc)

    register_error_handlers(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(health.bp)

    @app.after_request
    def _security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html":
            # Audio may come from a presigned S3 URL on another host; everything else is ours.
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; media-src 'self' https: http:; img-src 'self' data:; "
                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
        return response

    return app
