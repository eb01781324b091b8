"""The HTTP API's contract: an OpenAPI 3.1 document of every route under /api/ and the health checks.

Served by web/openapi.py (/api/v1/openapi.json; /api/docs renders it). Kept true by two tests:
tests/web/test_openapi.py (every route is in it and every path in it is a route, every error code
the code raises is documented, the document is valid OpenAPI 3.1) and tests/web/test_schemathesis.py
(Schemathesis against the live service: no 5xx, only documented statuses, types and fields).
operationId is the Flask endpoint, so each operation names the view that serves it.
"""

from __future__ import annotations

from shared.webhooks import MAX_URL_LENGTH
from web.idempotency import HEADER as IDEMPOTENCY_HEADER
from web.idempotency import KEY_PATTERN, REPLAYED_HEADER
from web.openapi_schemas import (
    AUDIO,
    JOB,
    JOB_ID,
    LOCATION,
    NO_JOB,
    NOT_READY,
    PREFER,
    PREFERENCE_APPLIED,
    RATE_LIMITED,
    READY,
    REDIS_DOWN,
    RETRY_AFTER,
    RETRY_AFTER_429,
    SCHEMAS,
    UNAUTHORIZED,
    VTT,
    WAIT,
    error,
    header,
    json_response,
    ref,
)
from web.uploads import SEED_MAX, WORDS_MAX, WORDS_MIN

Security = list[dict[str, list[str]]]
ANYONE: Security = [{}, {"apiKey": []}, {"session": []}]  # ownerless jobs are readable by whoever has the id
OWNER: Security = [{"apiKey": []}, {"session": []}]  # a known caller: an API key, or (reads only) a browser session
SUBMITTER: Security = [{}, {"apiKey": []}]  # sessions never authorise API POSTs (web/auth.py)
PUBLIC: list = []  # never asks who is calling

SUBMIT_FORM = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {
            "type": "string",
            "format": "binary",
            "description": "The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, up to MAX_UPLOAD_MB and MAX_IMAGE_PIXELS.",
        },
        "words": {
            "type": "integer",
            "minimum": WORDS_MIN,
            "maximum": WORDS_MAX,
            "description": "About how long the story is (default STORY_WORDS).",
        },
        "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX, "description": "Makes the story repeatable."},
        "style": {
            "type": "string",
            "maxLength": 100,
            "description": "A story style from GET /api/v1/styles (blank: the default style).",
        },
        "webhook": {
            "type": "string",
            "maxLength": MAX_URL_LENGTH,
            "anyOf": [{"format": "uri"}, {"pattern": r"^\s*$"}],
            "description": "An https URL that gets a signed POST when the job ends (blank: none).",
        },
    },
}

OPERATIONS = {
    ("/api/v1/jobs", "post"): {
        "operationId": "api.submit",
        "tags": ["jobs"],
        "summary": "Submit a photo",
        "security": SUBMITTER,
        "description": "Stores the photo and queues a job. With an `Idempotency-Key`, repeating the request "
        "(same photo and fields) within 24 hours returns the first request's job instead. With "
        "`Prefer: wait=S` the answer waits until the job is final or S seconds passed.",
        "parameters": [
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "description": "1 to 255 printable ASCII characters, e.g. a UUID.",
                "schema": {"type": "string", "pattern": f"^{KEY_PATTERN.pattern}$"},
            },
            PREFER,
        ],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": SUBMIT_FORM}}},
        "responses": {
            "202": json_response(
                "The new job: queued, or (with a `seed`, from the result cache) already succeeded with `cached: true`; "
                "with `Prefer: wait=S`, as it is when it is final or S seconds passed.",
                ref("Job"),
                {"Location": LOCATION, "Preference-Applied": PREFERENCE_APPLIED},
            ),
            "200": json_response(
                "A repeated `Idempotency-Key`: the first request's job as it is now.",
                ref("Job"),
                {
                    "Location": LOCATION,
                    REPLAYED_HEADER: header("`true`.", enum=["true"]),
                    "Preference-Applied": PREFERENCE_APPLIED,
                },
            ),
            "400": error(
                400,
                "missing_image",
                "empty_file",
                "invalid_words",
                "invalid_seed",
                "invalid_style",
                "invalid_idempotency_key",
                "invalid_webhook",
                "bad_request",
            ),
            "401": UNAUTHORIZED,
            "409": error(409, "idempotency_key_in_use", headers={"Retry-After": RETRY_AFTER}),
            "413": error(413, "too_large", "too_many_pixels"),
            "415": error(415, "unsupported_media_type", "not_an_image", "unsupported_format", "truncated_image"),
            "422": error(422, "idempotency_key_reused"),
            "429": error(429, "rate_limited", "too_many_queued", headers={"Retry-After": RETRY_AFTER_429}),
            "503": error(503, "redis_unavailable", "storage_unavailable", "queue_unavailable"),
        },
    },
    ("/api/v1/jobs", "get"): {
        "operationId": "api.list_jobs",
        "tags": ["jobs"],
        "summary": "List your jobs",
        "security": OWNER,
        "description": "The caller's own jobs, newest first; follow `next_cursor` for more. "
        "Ownerless jobs are never listed.",
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "Jobs per page (default 20).",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100},
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": "`next_cursor` of the previous page.",
                "schema": {"type": "string", "maxLength": 200},
            },
        ],
        "responses": {
            "200": json_response("A page of jobs.", ref("JobList")),
            "400": error(400, "invalid_limit", "invalid_cursor"),
            "401": UNAUTHORIZED,
            "429": RATE_LIMITED,
            "503": REDIS_DOWN,
        },
    },
    ("/api/v1/jobs/{job_id}", "get"): {
        "operationId": "api.get_job",
        "tags": ["jobs"],
        "summary": "Get a job",
        "security": ANYONE,
        "description": "The job. With `?wait=S`, a long poll: instead of polling every second, ask again as "
        "soon as each answer arrives.",
        "parameters": [JOB_ID, WAIT],
        "responses": {
            "200": JOB,
            "400": error(400, "invalid_wait"),
            "401": UNAUTHORIZED,
            "404": NO_JOB,
            "429": RATE_LIMITED,
            "503": REDIS_DOWN,
        },
    },
    ("/api/v1/jobs/{job_id}/cancel", "post"): {
        "operationId": "api.cancel",
        "tags": ["jobs"],
        "summary": "Cancel a job",
        "security": SUBMITTER,
        "description": "Cancels a queued or running job (its worker stops at its next stage). Canceling a "
        "canceled job returns it again.",
        "parameters": [JOB_ID],
        "responses": {
            "200": json_response("The canceled job.", ref("Job")),
            "401": UNAUTHORIZED,
            "404": NO_JOB,
            "409": error(409, "already_finished"),
            "503": REDIS_DOWN,
        },
    },
    ("/api/v1/jobs/{job_id}/audio", "get"): {
        "operationId": "api.job_audio",
        "tags": ["jobs"],
        "summary": "Get a job's MP3",
        "security": ANYONE,
        "description": "The MP3 of a succeeded job: the bytes (local storage; `Range` and conditional requests "
        "work) or a redirect to a short-lived presigned URL (S3).",
        "parameters": [
            JOB_ID,
            {
                "name": "download",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "`1`: as an attachment (`Content-Disposition`).",
            },
        ],
        "responses": {
            "200": {"description": "The MP3.", **AUDIO},
            "206": {"description": "The part a `Range` header asked for.", **AUDIO},
            "302": {
                "description": "On S3: a presigned URL of the MP3.",
                "headers": {"Location": header("The presigned URL.")},
            },
            "304": {"description": "Not modified since the copy the client has."},
            "401": UNAUTHORIZED,
            "404": error(404, "not_found", "audio_missing"),
            "409": error(409, "not_ready"),
            "416": error(416, "requested_range_not_satisfiable"),
            "429": RATE_LIMITED,
            "503": error(503, "redis_unavailable", "storage_unavailable"),
        },
    },
    ("/api/v1/jobs/{job_id}/subtitles.vtt", "get"): {
        "operationId": "api.job_subtitles",
        "tags": ["jobs"],
        "summary": "Get a job's word-timed subtitles",
        "security": ANYONE,
        "description": "WebVTT with one cue per word of the story as spoken (numbers spelled out), timed to the "
        'MP3; a written word read as several (`$5`: "five dollars") is one cue. The cue '
        "identifier `w<n>` is the index of that word in the story split at whitespace.",
        "parameters": [JOB_ID],
        "responses": {
            "200": {"description": "The WebVTT file.", **VTT},
            "401": UNAUTHORIZED,
            "404": error(404, "not_found", "subtitles_missing"),
            "409": error(409, "not_ready"),
            "429": RATE_LIMITED,
            "503": error(503, "redis_unavailable", "storage_unavailable"),
        },
    },
    ("/api/v1/jobs/{job_id}/image", "get"): {
        "operationId": "api.job_image",
        "tags": ["jobs"],
        "summary": "Get a job's photo",
        "security": ANYONE,
        "parameters": [JOB_ID],
        "responses": {
            "200": {
                "description": "The uploaded photo, with its own image type.",
                "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            "401": UNAUTHORIZED,
            "404": error(404, "not_found", "image_missing"),
            "429": RATE_LIMITED,
            "503": error(503, "redis_unavailable", "storage_unavailable"),
        },
    },
    ("/api/v1/styles", "get"): {
        "operationId": "styles_api.list_styles",
        "tags": ["jobs"],
        "summary": "List the story styles",
        "security": ANYONE,
        "description": "The styles a job may name in `style` (STORY_STYLES), in the server's order; exactly one "
        "is the default. Empty when the server has no styles.",
        "responses": {
            "200": json_response("The styles.", {"type": "array", "items": ref("Style")}),
            "401": UNAUTHORIZED,
            "503": REDIS_DOWN,
        },
    },
    ("/api/v1/webhooks/secret", "get"): {
        "operationId": "webhooks_api.secret",
        "tags": ["webhooks"],
        "summary": "Get your webhook secret",
        "security": OWNER,
        "description": "The `whsec_` secret that signs the webhooks of the caller's jobs.",
        "responses": {
            "200": json_response("The secret (created on first use).", ref("WebhookSecret")),
            "401": UNAUTHORIZED,
            "503": REDIS_DOWN,
        },
    },
    ("/healthz", "get"): {
        "operationId": "health.healthz",
        "tags": ["health"],
        "summary": "Liveness",
        "security": PUBLIC,
        "responses": {
            "200": json_response(
                "The process answers.",
                {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
            )
        },
    },
    ("/readyz", "get"): {
        "operationId": "health.readyz",
        "tags": ["health"],
        "summary": "Readiness",
        "security": PUBLIC,
        "description": "Redis and storage answer; also the live workers, the queue depth and the last "
        "model-load error.",
        "responses": {
            "200": json_response("Ready (`warnings` says when no worker is).", READY),
            "503": json_response("Redis or storage is unreachable (`error.message` says which).", NOT_READY),
        },
    },
    ("/api/v1/openapi.json", "get"): {
        "operationId": "openapi.spec",
        "tags": ["docs"],
        "summary": "This document",
        "security": PUBLIC,
        "responses": {"200": json_response("OpenAPI 3.1.", {"type": "object", "required": ["openapi", "paths"]})},
    },
    ("/api/docs", "get"): {
        "operationId": "openapi.docs",
        "tags": ["docs"],
        "summary": "This document as a web page",
        "security": PUBLIC,
        "responses": {"200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
    },
}

DESCRIPTION = (
    "Photo in, spoken story out: submit a photo, poll the job, fetch the MP3.\n\n"
    'Every error is `{"error": {"code", "message"}}` with a fitting status; each response below lists '
    "its codes. A path called with a method it does not have is `405 method_not_allowed` (with `Allow`). "
    "Nothing a client sends causes a 500.\n\n"
    "Send an API key as `Authorization: Bearer KEY` (`flask --app web.app keys create NAME`); with "
    "REQUIRE_API_KEY every API call needs one (or a browser session, for reads)."
)


def build_spec() -> dict:
    paths: dict = {}
    for (path, method), operation in OPERATIONS.items():
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Photo stories API", "version": "1", "description": DESCRIPTION},
        "tags": [{"name": "jobs"}, {"name": "webhooks"}, {"name": "health"}, {"name": "docs"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key, `nk_...`."},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "narrator_session",
                    "description": "The web form's signed session cookie: API reads only.",
                },
            },
        },
    }
