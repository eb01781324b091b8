"""The HTTP API's contract, declared once: the request and response models the views carry, the error
codes and what each means, and the answers of the server itself. flask-openapi3 generates the OpenAPI
3.1 document from them (web/api/docs.py serves it); the models also validate the requests, and a
validation error becomes this API's `{"error": {"code", "message"}}` with the field's own code.

What stays written by hand is what no model states: the error responses (each lists its codes, so
a response with an undocumented code breaks the schema), the response headers, and the non-JSON bodies.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from flask_openapi3 import FileStorage
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, ValidationError
from pydantic_core import PydanticUseDefault

from narrator_client.job import JOB_ID_PATTERN, SEED_MAX, WORDS_MAX, WORDS_MIN, Job
from shared.webhooks import MAX_URL_LENGTH
from web.jobs.events import _SECONDS, MAX_WAIT
from web.jobs.idempotency import HEADER as IDEMPOTENCY_HEADER
from web.jobs.idempotency import KEY_PATTERN
from web.middleware.errors import AppError

DEADLINE_MAX = 86400  # a day: longer-lived jobs need no deadline


class ErrorCode(str, Enum):
    """Every `error.code` the API answers with, and what it means."""

    meaning: str

    def __new__(cls, value: str, meaning: str):
        member = str.__new__(cls, value)
        member._value_, member.meaning = value, meaning
        return member

    missing_image = "missing_image", "no `image` file in the form"
    empty_file = "empty_file", "the `image` file is empty"
    invalid_words = "invalid_words", f"`words` is not a whole number from {WORDS_MIN} to {WORDS_MAX}"
    invalid_seed = "invalid_seed", f"`seed` is not a whole number from 0 to {SEED_MAX}"
    not_retryable = "not_retryable", "only a failed or canceled job whose photo is still stored can be retried"
    invalid_deadline = "invalid_deadline", f"`deadline` is not a whole number of seconds from 1 to {DEADLINE_MAX}"
    invalid_style = "invalid_style", "`style` is not one of the server's story styles (GET /api/v1/styles)"
    invalid_language = "invalid_language", "`language` is not one of the server's languages (GET /api/v1/languages)"
    invalid_limit = "invalid_limit", "`limit` is not a whole number from 1 to 100"
    invalid_cursor = "invalid_cursor", "a `cursor` this API did not return"
    invalid_wait = "invalid_wait", f"`wait` is not a number of seconds more than 0 and at most {MAX_WAIT:g}"
    invalid_idempotency_key = (
        "invalid_idempotency_key",
        f"`{IDEMPOTENCY_HEADER}` is empty, over 255 characters or not printable ASCII",
    )
    invalid_webhook = (
        "invalid_webhook",
        "`webhook` is not an https URL of a public host (or, without an API key, the server has no WEBHOOK_SECRET)",
    )
    bad_request = "bad_request", "the body was cut short or its framing is broken"
    api_key_required = (
        "api_key_required",
        "no API key (or browser session) where one is needed (any API call with REQUIRE_API_KEY)",
    )
    invalid_api_key = "invalid_api_key", "a wrong, revoked or malformed `Authorization` header"
    not_found = "not_found", "no such job (unknown, expired, or someone else's)"
    audio_missing = "audio_missing", "the job succeeded but its audio is gone from storage"
    subtitles_missing = (
        "subtitles_missing",
        "the job succeeded but has no subtitles in storage (gone, or made before subtitles existed)",
    )
    image_missing = "image_missing", "the uploaded photo is no longer stored"
    method_not_allowed = "method_not_allowed", "the path exists, but not with this HTTP method"
    not_ready = "not_ready", "the job has not succeeded (yet): there is no audio or subtitles"
    already_finished = "already_finished", "the job succeeded or failed before it could be canceled"
    idempotency_key_in_use = (
        "idempotency_key_in_use",
        f"another request with this `{IDEMPOTENCY_HEADER}` is still being processed",
    )
    too_large = "too_large", "the upload is over MAX_UPLOAD_MB"
    too_many_pixels = "too_many_pixels", "the image is over MAX_IMAGE_PIXELS (decompression bombs)"
    requested_range_not_satisfiable = "requested_range_not_satisfiable", "the `Range` asked for lies outside the file"
    unsupported_media_type = "unsupported_media_type", "the body is not multipart/form-data"
    not_an_image = "not_an_image", "the file is not an image"
    unsupported_format = "unsupported_format", "an image format other than JPEG, PNG, WebP, GIF, BMP or TIFF"
    truncated_image = "truncated_image", "the image is cut off or corrupt"
    idempotency_key_reused = (
        "idempotency_key_reused",
        f"the caller already used this `{IDEMPOTENCY_HEADER}` for a different request (keys are per owner)",
    )
    rate_limited = (
        "rate_limited",
        "over SUBMIT_RATE_LIMIT, SUBMIT_ADDRESS_RATE_LIMIT (submits without a key, per client address) or "
        "READ_RATE_LIMIT (see `Retry-After`)",
    )
    too_many_queued = (
        "too_many_queued",
        "the owner (without a key or session: the client address) already has MAX_QUEUED_PER_OWNER jobs waiting",
    )
    redis_unavailable = "redis_unavailable", "the job store (Redis) is unavailable"
    storage_unavailable = "storage_unavailable", "storage is unavailable"
    queue_unavailable = "queue_unavailable", "the job queue is unavailable"


# --- requests ------------------------------------------------------------------------------------------


def _blank_is_absent(value: Any) -> Any:
    """The web form sends its empty fields: a blank value counts as absent (the field's default)."""
    if isinstance(value, str):
        if not value.strip():
            raise PydanticUseDefault()
        return value.strip()
    return value


Blank = BeforeValidator(_blank_is_absent)


class SubmitFields(BaseModel):
    """The fields next to the photo, the API's and the web form's alike (web/jobs/submit.py validates them)."""

    words: Annotated[int | None, Blank, Field(ge=WORDS_MIN, le=WORDS_MAX)] = Field(
        None, description="About how long the story is (default STORY_WORDS)."
    )
    seed: Annotated[int | None, Blank, Field(ge=0, le=SEED_MAX)] = Field(
        None, description="Makes the story repeatable."
    )
    style: Annotated[str | None, Blank, Field(max_length=100)] = Field(
        None, description="A story style from GET /api/v1/styles (blank: the default style)."
    )
    language: Annotated[str | None, Blank, Field(max_length=100)] = Field(
        None,
        description="The story's and the voice's language, a code from GET /api/v1/languages (blank: the default).",
    )
    webhook: Annotated[str | None, Blank, Field(json_schema_extra={"maxLength": MAX_URL_LENGTH})] = Field(
        None, description="An https URL that gets a signed POST when the job ends (blank: none)."
    )
    deadline: Annotated[int | None, Blank, Field(ge=1, le=DEADLINE_MAX)] = Field(
        None,
        description="Seconds: a job no worker has started this long after it was submitted never runs; it fails "
        "with an `error` starting `expired:` (its webhook fires once). Blank: no deadline.",
    )


class SubmitForm(SubmitFields):
    image: FileStorage = Field(
        description="The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, up to MAX_UPLOAD_MB and MAX_IMAGE_PIXELS."
    )


class JobHeaders(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    if_none_match: str | None = Field(
        None,
        alias="If-None-Match",
        description="The `ETag` of the job as the caller last saw it: 304 while it is still so; with `wait`, the "
        "answer comes as soon as the job differs from it (also when it changed before this request came).",
    )


class SubmitHeaders(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    idempotency_key: str | None = Field(
        None,
        alias=IDEMPOTENCY_HEADER,
        pattern=f"^{KEY_PATTERN.pattern}$",
        description="1 to 255 printable ASCII characters, e.g. a UUID.",
    )
    prefer: str | None = Field(
        None,
        alias="Prefer",
        description=f"RFC 7240. `wait=S` (seconds, at most {MAX_WAIT:g}; more counts as {MAX_WAIT:g}): answer once "
        "the new job is final (succeeded, failed or canceled) or after S seconds, with the job as it then is. "
        "Other preferences, and a `wait` that is not a number of seconds above 0, are ignored.",
    )


class JobPath(BaseModel):
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="The job's id, as submit returned it.")


class ListQuery(BaseModel):
    limit: Annotated[int, Blank, Field(ge=1, le=100)] = Field(20, description="Jobs per page.")
    cursor: Annotated[str | None, Blank, Field(max_length=200)] = Field(
        None, description="`next_cursor` of the previous page."
    )


def _decimal_seconds(value: Any) -> Any:
    """Plain decimals only (`2`, `0.5`): no exponents, signs or words such as `inf`."""
    if isinstance(value, str) and not _SECONDS.fullmatch(value.strip()):
        raise ValueError("not a number of seconds")
    return value


class WaitQuery(BaseModel):
    wait: Annotated[float | None, BeforeValidator(_decimal_seconds)] = Field(
        None,
        gt=0,
        le=MAX_WAIT,
        description="A long poll: answer when the job's `status` or `stage` changes (at once when it is final), "
        "or after this many seconds, with the job as a plain GET answers it.",
    )


class AudioQuery(BaseModel):
    download: str | None = Field(None, description="`1`: as an attachment (`Content-Disposition`).")


def validation_error(exc: ValidationError):
    """A request a model refused: a bad job id is as unknown as any other (404), a bad field its 400."""
    if exc.title == JobPath.__name__:
        raise AppError(404, "not_found", "No such job (it may have expired).")
    field = str(exc.errors()[0]["loc"][0]) if exc.errors() and exc.errors()[0]["loc"] else ""
    code = ErrorCode[f"invalid_{field.lower().replace('-', '_')}"]  # member names are the codes
    raise AppError(
        400, code.value, code.meaning.replace("`", "'")[:1].upper() + code.meaning.replace("`", "'")[1:] + "."
    )


# --- responses -----------------------------------------------------------------------------------------


class JobList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    jobs: list[Job] = Field(description="The caller's jobs, newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class Style(BaseModel):
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    name: str = Field(pattern="^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$", description="Send it as `style`.")
    default: bool = Field(description="true: the style of jobs that name none.")


class Styles(RootModel[list[Style]]):
    """The styles, in the server's order."""


class Language(BaseModel):
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    code: str = Field(
        pattern="^[a-z]{3}(-script_[a-z]+)?$", description="ISO 639-3, as MMS names its voices. Send it as `language`."
    )
    name: str = Field(description="The language's English name (the code where the server knows no name).")
    default: bool = Field(description="true: the language of jobs that name none.")


class Languages(RootModel[list[Language]]):
    """The languages, in the server's order."""


class WebhookSecret(BaseModel):
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    secret: str = Field(
        pattern="^whsec_",
        description="Verifies the caller's webhooks (Standard Webhooks: `webhook-id`, `webhook-timestamp`, "
        "`webhook-signature`).",
    )


class Alive(BaseModel):
    status: Literal["ok"]


class Checks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    redis: Literal["ok", "unavailable"]
    storage: Literal["ok", "unavailable"]


class Workers(BaseModel):
    live: int = Field(ge=0)
    ready: int = Field(ge=0)
    busy: int = Field(ge=0)


class Queue(BaseModel):
    queued: int = Field(ge=0)


class ModelError(BaseModel):
    message: str
    at: str | None = Field(json_schema_extra={"format": "date-time"})


class StoryModel(BaseModel):
    adapter: bool = Field(description="true: STORY_ADAPTER, one LoRA adapter merged into the story model.")
    styles: list[str] = Field(description="The story styles served (STORY_STYLES), empty without.")
    default_style: str | None = Field(description="The style of jobs that name none.")


class Ready(BaseModel):
    status: Literal["ready"]
    checks: Checks
    warnings: list[str]
    workers: Workers
    queue: Queue
    last_model_error: ModelError | None
    story: StoryModel


class NotReadyError(BaseModel):
    code: Literal["not_ready"]
    message: str


class NotReady(BaseModel):
    status: Literal["unavailable"]
    checks: Checks
    error: NotReadyError
    story: StoryModel
    workers: Workers | None = None
    queue: Queue | None = None
    last_model_error: ModelError | None = None


class Document(BaseModel):
    openapi: str
    paths: dict[str, Any]


# --- what no model states: error responses, headers, other media types (hand-written) -----------------

REASONS = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 409: "Conflict", 413: "Too large"}
REASONS |= {415: "Unsupported media type", 416: "Range not satisfiable", 422: "Unprocessable"}
REASONS |= {429: "Too many requests", 503: "Unavailable"}


def header(description: str, required: bool = True, **schema) -> dict:
    return {"description": description, "required": required, "schema": {"type": "string", **schema}}


def error(status: int, *codes: ErrorCode, headers: dict | None = None) -> dict:
    """An error response whose `code` can only be one of `codes`."""
    code = {"type": "string", "enum": [c.value for c in codes]}
    fields = {"code": code, "message": {"type": "string"}}
    inner = {"type": "object", "required": ["code", "message"], "properties": fields}
    body = {"type": "object", "required": ["error"], "properties": {"error": inner}}
    text = REASONS[status] + ": " + "; ".join(f"`{c.value}`: {c.meaning}" for c in codes) + "."
    return {
        "description": text,
        "content": {"application/json": {"schema": body}},
        **({"headers": headers} if headers else {}),
    }


def media(description: str, media_type: str, **schema) -> dict:
    return {"description": description, "content": {media_type: {"schema": {"type": "string", **schema}}}}


def json_ref(description: str, name: str, headers: dict) -> dict:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}, "headers": headers}


E = ErrorCode
RETRY_AFTER = header("Seconds to wait before retrying.", pattern=r"^[0-9]+$")
RETRY_AFTER_429 = {**RETRY_AFTER, "required": False, "description": "Seconds to wait before retrying (`rate_limited`)."}
CHALLENGE = header('`Bearer realm="narrator"`, with `error="invalid_token"` for a bad key.', pattern="^Bearer ")
LOCATION = header("The job's URL, `/api/v1/jobs/{job_id}`.")
ETAG = header("The job as answered, for `If-None-Match`.")
NOT_MODIFIED = {
    "description": "The job is still as the `If-None-Match` ETag says (no body).",
    "headers": {"ETag": ETAG},
}
APPLIED = header("`wait=S`, the wait applied, when the request asked for one.", required=False)
UNAUTHORIZED = error(401, E.api_key_required, E.invalid_api_key, headers={"WWW-Authenticate": CHALLENGE})
REDIS_DOWN: dict[Any, Any] = error(503, E.redis_unavailable)
STORAGE_DOWN: dict[Any, Any] = error(503, E.redis_unavailable, E.storage_unavailable)
RATE_LIMITED: dict[Any, Any] = error(429, E.rate_limited, headers={"Retry-After": RETRY_AFTER_429})
NO_JOB: dict[Any, Any] = error(404, E.not_found)
# Answered by the HTTP server (gunicorn) before the app sees the request, as its own HTML page.
SERVER: dict[Any, Any] = {
    414: media("URI too long: the request line is over 4,094 bytes (a long query string).", "text/html"),
    431: media("Request header fields too large (over 8,190 bytes, or over 50 of them).", "text/html"),
}
API: dict[Any, Any] = {401: UNAUTHORIZED, **SERVER}  # what any API call may meet
ANYONE: list = [{}, {"apiKey": []}, {"session": []}]  # ownerless jobs are readable by whoever has the id
OWNER: list = [{"apiKey": []}, {"session": []}]  # a known caller: an API key, or (reads only) a browser session
SUBMITTER: list = [{}, {"apiKey": []}]  # sessions never authorise API POSTs (web/middleware/auth.py)
KEY_HOLDER: list = [{"apiKey": []}]  # an API POST that needs an owner: a key (sessions never authorise those)
SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key, `nk_...`."},
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "narrator_session",
        "description": "The web form's signed session cookie: API reads only. Over https its name is "
        "`__Host-narrator_session`.",
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


def operation_id(bp_name: str = "", name: str = "", path: str = "", method: str = "") -> str:
    """The Flask endpoint: each operation names the view that serves it."""
    return f"{bp_name}.{name}"


def submit_extras() -> dict:
    """The submit view reads its form itself (after the size and queue checks, and shared with the web
    form's posts), so its body and headers are declared from the models here rather than validated
    before the view runs."""
    params = [
        {"name": f.alias, "in": "header", "required": False, "description": f.description, "schema": schema}
        for name, f in SubmitHeaders.model_fields.items()
        for schema in [SubmitHeaders.model_json_schema()["properties"][f.alias or name]]
    ]
    form = {"multipart/form-data": {"schema": SubmitForm.model_json_schema()}}
    return {"parameters": params, "requestBody": {"required": True, "content": form}}
