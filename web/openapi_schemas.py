"""The pieces of the API's OpenAPI document (web/openapi_spec.py): the error codes and what each
means, the error responses (each lists its codes in an enum, so a response with an undocumented
code breaks the schema), and the component schemas, built from the constants the code uses.
"""

from __future__ import annotations

from shared.jobs.public import PUBLIC_FIELDS
from shared.jobs.schema import JobStatus, Stage
from web.api import JOB_ID as JOB_ID_PATTERN
from web.idempotency import HEADER as IDEMPOTENCY_HEADER
from web.job_events import MAX_WAIT
from web.uploads import SEED_MAX, WORDS_MAX, WORDS_MIN

# What each error code means; an error response documents the codes it can carry.
CODES = {
    "missing_image": "no `image` file in the form",
    "empty_file": "the `image` file is empty",
    "invalid_words": f"`words` is not a whole number from {WORDS_MIN} to {WORDS_MAX}",
    "invalid_seed": f"`seed` is not a whole number from 0 to {SEED_MAX}",
    "invalid_style": "`style` is not one of the server's story styles (GET /api/v1/styles)",
    "invalid_limit": "`limit` is not a whole number from 1 to 100",
    "invalid_cursor": "a `cursor` this API did not return",
    "invalid_wait": f"`wait` is not a number of seconds more than 0 and at most {MAX_WAIT:g}",
    "invalid_idempotency_key": f"`{IDEMPOTENCY_HEADER}` is empty, over 255 characters or not printable ASCII",
    "invalid_webhook": "`webhook` is not an https URL of a public host (or, without an API key, the "
    "server has no WEBHOOK_SECRET)",
    "bad_request": "the body was cut short or its framing is broken",
    "api_key_required": "no API key (or browser session) where one is needed (any API call with REQUIRE_API_KEY)",
    "invalid_api_key": "a wrong, revoked or malformed `Authorization` header",
    "not_found": "no such job (unknown, expired, or someone else's)",
    "audio_missing": "the job succeeded but its audio is gone from storage",
    "subtitles_missing": "the job succeeded but has no subtitles in storage (gone, or made before subtitles existed)",
    "image_missing": "the uploaded photo is no longer stored",
    "method_not_allowed": "the path exists, but not with this HTTP method",
    "not_ready": "the job has not succeeded (yet): there is no audio or subtitles",
    "already_finished": "the job succeeded or failed before it could be canceled",
    "idempotency_key_in_use": f"another request with this `{IDEMPOTENCY_HEADER}` is still being processed",
    "too_large": "the upload is over MAX_UPLOAD_MB",
    "too_many_pixels": "the image is over MAX_IMAGE_PIXELS (decompression bombs)",
    "requested_range_not_satisfiable": "the `Range` asked for lies outside the file",
    "unsupported_media_type": "the body is not multipart/form-data",
    "not_an_image": "the file is not an image",
    "unsupported_format": "an image format other than JPEG, PNG, WebP, GIF, BMP or TIFF",
    "truncated_image": "the image is cut off or corrupt",
    "idempotency_key_reused": f"this `{IDEMPOTENCY_HEADER}` was used with another photo, `words`, `seed` or "
    "`webhook`, or by another owner",
    "rate_limited": "over SUBMIT_RATE_LIMIT or READ_RATE_LIMIT (see `Retry-After`)",
    "too_many_queued": "the owner already has MAX_QUEUED_PER_OWNER jobs waiting",
    "redis_unavailable": "the job store (Redis) is unavailable",
    "storage_unavailable": "storage is unavailable",
    "queue_unavailable": "the job queue is unavailable",
}
REASONS = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Unprocessable",
    429: "Too many requests",
    503: "Unavailable",
}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def header(description: str, required: bool = True, **schema) -> dict:
    return {"description": description, "required": required, "schema": {"type": "string", **schema}}


RETRY_AFTER = header("Seconds to wait before retrying.", pattern=r"^[0-9]+$")
RETRY_AFTER_429 = {
    **RETRY_AFTER,
    "required": False,
    "description": "Seconds to wait before retrying (with `rate_limited`).",
}
CHALLENGE = header('`Bearer realm="narrator"`, with `error="invalid_token"` for a bad key.', pattern="^Bearer ")
LOCATION = header("The job's URL, `/api/v1/jobs/{job_id}`.")


def error(status: int, *codes: str, headers: dict | None = None) -> dict:
    """An error response whose `code` can only be one of `codes`."""
    body = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string", "enum": list(codes)}, "message": {"type": "string"}},
            }
        },
    }
    text = REASONS[status] + ": " + "; ".join(f"`{code}`: {CODES[code]}" for code in codes) + "."
    response = {"description": text, "content": {"application/json": {"schema": body}}}
    if headers:
        response["headers"] = headers
    return response


def json_response(description: str, schema: dict, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


# Every API call (not the health checks or these docs) may meet these.
UNAUTHORIZED = error(401, "api_key_required", "invalid_api_key", headers={"WWW-Authenticate": CHALLENGE})
REDIS_DOWN = error(503, "redis_unavailable")
RATE_LIMITED = error(429, "rate_limited", headers={"Retry-After": RETRY_AFTER_429})
NO_JOB = error(404, "not_found")
JOB = json_response("The job.", ref("Job"))
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "A long poll: answer when the job's `status` or `stage` changes (at once when it is final), "
    f"or after this many seconds (decimals allowed, at most {MAX_WAIT:g}), with the job as a plain GET "
    "answers it.",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT},
}
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": f"RFC 7240. `wait=S` (seconds, at most {MAX_WAIT:g}; more counts as {MAX_WAIT:g}): answer "
    "once the new job is final (succeeded, failed or canceled) or after S seconds, with the job as it then is. "
    "Other preferences, and a `wait` that is not a number of seconds above 0, are ignored.",
    "schema": {"type": "string"},
}
PREFERENCE_APPLIED = header("`wait=S`, the wait applied, when the request asked for one.", required=False)
JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The job's id, as submit returned it.",
    "schema": {"type": "string", "pattern": f"^{JOB_ID_PATTERN.pattern}$"},
}

NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
SCHEMAS = {
    "Job": {
        "type": "object",
        "additionalProperties": False,
        "required": list(PUBLIC_FIELDS),
        "properties": {
            "id": {"type": "string", "pattern": f"^{JOB_ID_PATTERN.pattern}$"},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "stage": {
                "type": ["string", "null"],
                "enum": [s.value for s in Stage] + [None],
                "description": "What a running job is doing; null otherwise.",
            },
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
            "caption": {"type": ["string", "null"], "description": "Set as soon as the photo is described."},
            "story": {"type": ["string", "null"], "description": "Set as soon as the story is written."},
            "audio_url": {
                "type": ["string", "null"],
                "format": "uri-reference",
                "description": "The audio endpoint once the job succeeded (absolute under PUBLIC_BASE_URL).",
            },
            "audio_seconds": {"type": ["number", "null"], "minimum": 0},
            "subtitles_url": {
                "type": ["string", "null"],
                "format": "uri-reference",
                "description": "WebVTT of the spoken words, timed to the audio, once the job succeeded.",
            },
            "error": {"type": ["string", "null"], "description": "Why the job failed."},
            "timings": {
                "type": "object",
                "additionalProperties": {"type": "number"},
                "description": "Seconds per stage (caption, story, speech, encode).",
            },
            "words": {"type": "integer", "minimum": WORDS_MIN, "maximum": WORDS_MAX},
            "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": SEED_MAX},
            "style": {
                "type": ["string", "null"],
                "description": "The story style the job runs in (GET /api/v1/styles): "
                "the one asked for, else the default; null when the server has no styles.",
            },
            "filename": {"type": ["string", "null"], "description": "The upload's file name (display only)."},
            "attempts": {
                "type": "integer",
                "minimum": 0,
                "description": "Runs started (more than 1 after a worker died).",
            },
            "cached": {
                "type": "boolean",
                "description": "true: the job succeeded at submit from the result cache (an "
                "earlier job with the same photo, `words`, `seed` and style; no worker ran it).",
            },
        },
    },
    "JobList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": ref("Job"), "description": "The caller's jobs, newest first."},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null at the end.",
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": list(CODES), "description": "Stable, for programs."},
                    "message": {"type": "string", "description": "For people."},
                },
            }
        },
        "description": "Every error. Each operation's responses list the codes they can carry.",
    },
    "WebhookSecret": {
        "type": "object",
        "additionalProperties": False,
        "required": ["secret"],
        "properties": {
            "secret": {
                "type": "string",
                "pattern": "^whsec_",
                "description": "Verifies the caller's webhooks "
                "(Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`).",
            }
        },
    },
    "Style": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "default"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$",
                "description": "Send it as `style`.",
            },
            "default": {"type": "boolean", "description": "true: the style of jobs that name none."},
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "checks": {
                "type": "object",
                "required": ["redis", "storage"],
                "additionalProperties": False,
                "properties": {
                    part: {"type": "string", "enum": ["ok", "unavailable"]} for part in ("redis", "storage")
                },
            },
            "warnings": {"type": "array", "items": {"type": "string"}},
            "workers": {
                "type": "object",
                "required": ["live", "ready", "busy"],
                "properties": {n: {"type": "integer", "minimum": 0} for n in ("live", "ready", "busy")},
            },
            "queue": {
                "type": "object",
                "required": ["queued"],
                "properties": {"queued": {"type": "integer", "minimum": 0}},
            },
            "last_model_error": {
                "type": ["object", "null"],
                "required": ["message", "at"],
                "properties": {"message": {"type": "string"}, "at": NULLABLE_TIME},
            },
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string", "enum": ["not_ready"]}, "message": {"type": "string"}},
            },
        },
    },
}

READY = {
    "allOf": [ref("Readiness")],
    "required": ["warnings", "workers", "queue", "last_model_error"],
    "properties": {"status": {"const": "ready"}},
}
NOT_READY = {"allOf": [ref("Readiness")], "required": ["error"], "properties": {"status": {"const": "unavailable"}}}
AUDIO = {"content": {"audio/mpeg": {"schema": {"type": "string", "format": "binary"}}}}
VTT = {"content": {"text/vtt": {"schema": {"type": "string", "pattern": "^WEBVTT"}}}}
