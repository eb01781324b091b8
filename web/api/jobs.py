"""JSON API under /api/v1: submit a photo, poll the job, fetch the audio and subtitles, cancel, list."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable

from flask import Response, current_app, jsonify, redirect, request, send_file, url_for
from flask_openapi3 import APIBlueprint, Tag

from narrator_client.job import JOB_ID_PATTERN
from narrator_client.job import Job as PublicJob
from shared.jobs import Job, JobStatus, files
from shared.jobs.public import public_model
from shared.storage import StorageNotFound
from web.api import contract as c
from web.api.contract import E
from web.jobs import actions
from web.jobs.events import JobEvents, applied_wait, preferred_wait
from web.jobs.idempotency import REPLAYED_HEADER, IdempotentSubmit
from web.jobs.submit import check_queued, create_job_from_request
from web.middleware.auth import client_network, current_owner, may_see, require_owner
from web.middleware.errors import AppError, error_response
from web.services import services

bp = APIBlueprint("api", __name__, url_prefix="/api/v1", operation_id_callback=c.operation_id)
JOBS = [Tag(name="jobs")]

# Ids come from secrets.token_urlsafe; anything else cannot be a job, so Redis is not even asked.
JOB_ID = re.compile(JOB_ID_PATTERN)
PREFERENCE_APPLIED = "Preference-Applied"  # RFC 7240's answer to `Prefer: wait=S`


def load_job(job_id: str) -> Job:
    """The job, if it exists and the caller may see it: someone else's job is as unknown as a
    job that never existed (404 either way, so ids cannot be probed)."""
    job = services().jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or not may_see(job.owner):
        raise AppError(404, "not_found", "No such job (it may have expired).")
    return job


def public_url(endpoint: str, **values) -> str:
    """A URL for clients: absolute under PUBLIC_BASE_URL, or from what a trusted proxy says
    (PROXY_HOPS, applied by ProxyFix), else relative. Never from a raw Host header, which any
    client can set."""
    settings = services().settings
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, **values, _external=bool(settings.proxy_hops))


def audio_url(job: Job) -> str | None:
    """URL of the audio endpoint: it never expires, and it redirects to a fresh presigned URL on
    S3, so the value stays fetchable with a plain GET for as long as the job exists."""
    if job.status != JobStatus.SUCCEEDED or not job.audio_key:
        return None
    return public_url("api.job_audio", job_id=job.id)


def subtitles_url(job: Job) -> str | None:
    if job.status != JobStatus.SUCCEEDED or not job.audio_key or not job.subtitles_key:
        return None  # not yet, or a job finished before subtitles were made
    return public_url("api.job_subtitles", job_id=job.id)


def is_final(job: Job) -> bool:
    return JobStatus(job.status).finished


def job_events() -> JobEvents:
    """This app's one subscription to job changes (web/jobs/events.py), made on the first wait."""
    events = current_app.extensions.get("narrator_job_events")
    if events is None:  # two first requests at once may both build one: only the kept one subscribes
        events = current_app.extensions.setdefault("narrator_job_events", JobEvents(services().redis))
    return events


def await_job(job_id: str, seconds: float, done: Callable[[Job, Job], bool]) -> Job:
    """The job once `done(first, now)` holds (or it is final), else after `seconds`; `first` is the
    job as the wait began. Each wake-up costs one read of the job; the wait itself costs Redis nothing."""
    deadline = time.monotonic() + seconds
    events = job_events()

    def read() -> Job:
        with events.reading:
            return load_job(job_id)

    with events.watch(job_id) as waiter:
        first = job = read()  # after registering: a change from here on wakes the waiter
        while not (is_final(job) or done(first, job)):
            if not waiter.wait(deadline - time.monotonic()):
                return read()  # time is up: the job as it is now
            job = read()
        return job


def moved(first: Job, job: Job) -> bool:
    return (job.status, job.stage) != (first.status, first.stage)


def etag(view: dict) -> str:
    """The ETag of a job as answered: a client that sends it back (`If-None-Match`) says what it has
    seen, so a long poll answers as soon as the job differs from that, even when the change came
    between the client's two polls."""
    digest = hashlib.sha256(json.dumps(view, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest[:24]


def job_view(job: Job) -> dict:
    """The job as the API answers it: the model webhooks carry too, with this request's URLs."""
    return public_model(job, audio_url(job), subtitles_url(job)).model_dump(mode="json")


@bp.post(
    "/jobs",
    tags=JOBS,
    summary="Submit a photo",
    description="Stores the photo and queues a job. With an `Idempotency-Key`, repeating the request (same photo "
    "and fields) within 24 hours returns the first request's job instead. With `Prefer: wait=S` the answer waits "
    "until the job is final or S seconds passed.",
    security=c.SUBMITTER,
    openapi_extensions=c.submit_extras(),
    responses={
        202: c.json_ref(
            "The new job: queued, or (with a `seed`, from the result cache) already succeeded with `cached: true`; "
            "with `Prefer: wait=S`, as it is when it is final or S seconds passed.",
            "Job",
            {"Location": c.LOCATION, PREFERENCE_APPLIED: c.APPLIED},
        ),
        200: c.json_ref(
            "A repeated `Idempotency-Key`: the first request's job as it is now.",
            "Job",
            {
                "Location": c.LOCATION,
                REPLAYED_HEADER: c.header("`true`.", enum=["true"]),
                PREFERENCE_APPLIED: c.APPLIED,
            },
        ),
        **c.API,
        400: c.error(
            400,
            E.missing_image,
            E.empty_file,
            E.invalid_words,
            E.invalid_seed,
            E.invalid_deadline,
            E.invalid_style,
            E.invalid_language,
            E.invalid_idempotency_key,
            E.invalid_webhook,
            E.bad_request,
        ),
        409: c.error(409, E.idempotency_key_in_use, headers={"Retry-After": c.RETRY_AFTER}),
        413: c.error(413, E.too_large, E.too_many_pixels),
        415: c.error(415, E.unsupported_media_type, E.not_an_image, E.unsupported_format, E.truncated_image),
        422: c.error(422, E.idempotency_key_reused),
        429: c.error(429, E.rate_limited, E.too_many_queued, headers={"Retry-After": c.RETRY_AFTER_429}),
        503: c.error(503, E.redis_unavailable, E.storage_unavailable, E.queue_unavailable),
    },
)
def submit():
    # Checked before the body is read; a replay answers 200 with the job's current state.
    idempotency = IdempotentSubmit.from_headers(request.headers)
    try:
        job = create_job_from_request(idempotency, owner=current_owner())
    except AppError as exc:
        if exc.code != "idempotency_key_in_use":
            raise
        return error_response(exc.status, exc.code, exc.message, {"Retry-After": "1"})
    wait = preferred_wait(request.headers.getlist("Prefer"))
    if wait is not None:  # RFC 7240: answer once the job is final, or when the wait is over
        job = await_job(job.id, wait, lambda first, now: False)
    response = jsonify(job_view(job))
    response.status_code = 202
    if idempotency is not None and idempotency.replayed:
        response.status_code = 200
        response.headers[REPLAYED_HEADER] = "true"
    response.headers["Location"] = url_for("api.get_job", job_id=job.id)
    if wait is not None:
        response.headers[PREFERENCE_APPLIED] = applied_wait(wait)
    return response


@bp.get(
    "/jobs",
    tags=JOBS,
    summary="List your jobs",
    description="The caller's own jobs, newest first; follow `next_cursor` for more. Ownerless jobs are never listed.",
    security=c.OWNER,
    responses={
        200: c.JobList,
        **c.API,
        400: c.error(400, E.invalid_limit, E.invalid_cursor),
        429: c.RATE_LIMITED,
        503: c.REDIS_DOWN,
    },
)
def list_jobs(query: c.ListQuery):
    owner = require_owner()
    try:
        jobs, next_cursor = services().jobs.list(limit=query.limit, cursor=query.cursor, owner=owner)
    except ValueError:
        raise AppError(400, "invalid_cursor", "The cursor is not one this API returned.") from None
    return jsonify(jobs=[job_view(job) for job in jobs], next_cursor=next_cursor)


@bp.get(
    "/jobs/<job_id>",
    tags=JOBS,
    summary="Get a job",
    description="The job. With `?wait=S`, a long poll: instead of polling every second, ask again as soon as each "
    "answer arrives.",
    security=c.ANYONE,
    responses={
        200: c.json_ref("The job.", "Job", {"ETag": c.ETAG}),
        304: c.NOT_MODIFIED,
        **c.API,
        400: c.error(400, E.invalid_wait),
        404: c.NO_JOB,
        429: c.RATE_LIMITED,
        503: c.REDIS_DOWN,
    },
)
def get_job(path: c.JobPath, query: c.WaitQuery, header: c.JobHeaders):
    job_id, wait, seen = path.job_id, query.wait, request.if_none_match
    if wait is None:
        job = load_job(job_id)
    elif seen:  # wait until the job is no longer what the client has
        job = await_job(job_id, wait, lambda first, now: not seen.contains(etag(job_view(now))))
    else:
        job = await_job(job_id, wait, moved)
    view = job_view(job)
    tag = etag(view)
    if seen.contains(tag):
        response = Response(status=304)
    else:
        response = jsonify(view)
    response.set_etag(tag)
    return response


@bp.post(
    "/jobs/<job_id>/cancel",
    tags=JOBS,
    summary="Cancel a job",
    description="Cancels a queued or running job (its worker stops at its next stage). Canceling a canceled job "
    "returns it again.",
    security=c.SUBMITTER,
    responses={200: PublicJob, **c.API, 404: c.NO_JOB, 409: c.error(409, E.already_finished), 503: c.REDIS_DOWN},
)
def cancel(path: c.JobPath):
    job_id = path.job_id
    services().jobs.cancel(load_job(job_id).id)  # load_job first: an unknown id is a 404
    job = load_job(job_id)
    if job.status != JobStatus.CANCELED:  # canceling twice is harmless; finished is final
        raise AppError(409, "already_finished", f"The job has already {job.status.value}.")
    # The worker sees the canceled status at its next transition and stops there.
    return jsonify(job_view(job))


@bp.delete(
    "/jobs/<job_id>",
    tags=JOBS,
    summary="Delete a job",
    description="Cancels the job if it is queued or running, then deletes its photo, its audio and subtitles (every "
    "run's) and its record: from then on the job is unknown (404) everywhere. Deleting it again is a 404.",
    security=c.SUBMITTER,
    responses={
        204: {"description": "Deleted (no body)."},
        **c.API,
        404: c.NO_JOB,
        503: c.error(503, E.redis_unavailable, E.storage_unavailable),
    },
)
def delete_job(path: c.JobPath):
    actions.erase(services(), load_job(path.job_id))  # load_job: someone else's job is a 404 too
    return Response(status=204)


@bp.post(
    "/jobs/<job_id>/retry",
    tags=JOBS,
    summary="Retry a job",
    description="A failed or canceled job runs again as a new job: the same photo, `words`, `seed`, style and "
    "webhook (`retry_of` names the old job, which stays as it was). Counts as a submit for the rate limits.",
    security=c.SUBMITTER,
    responses={
        202: c.json_ref("The new job, queued.", "Job", {"Location": c.LOCATION}),
        **c.API,
        404: c.NO_JOB,
        409: c.error(409, E.not_retryable),
        429: c.error(429, E.rate_limited, E.too_many_queued, headers={"Retry-After": c.RETRY_AFTER_429}),
        503: c.error(503, E.redis_unavailable, E.storage_unavailable, E.queue_unavailable),
    },
)
def retry(path: c.JobPath):
    old = load_job(path.job_id)
    check_queued(services(), old.owner or old.lane or client_network())
    job = actions.retry(services(), old)
    response = jsonify(job_view(job))
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_job", job_id=job.id)
    return response


@bp.get(
    "/jobs/<job_id>/audio",
    tags=JOBS,
    summary="Get a job's MP3",
    description="The MP3 of a succeeded job: the bytes (local storage; `Range` and conditional requests work) or a "
    "redirect to a short-lived presigned URL (S3).",
    security=c.ANYONE,
    responses={
        200: c.media("The MP3.", "audio/mpeg", format="binary"),
        206: c.media("The part a `Range` header asked for.", "audio/mpeg", format="binary"),
        302: {"description": "On S3: a presigned URL of the MP3.", "headers": {"Location": c.header("The URL.")}},
        304: {"description": "Not modified since the copy the client has."},
        **c.API,
        404: c.error(404, E.not_found, E.audio_missing),
        409: c.error(409, E.not_ready),
        416: c.error(416, E.requested_range_not_satisfiable),
        429: c.RATE_LIMITED,
        503: c.STORAGE_DOWN,
    },
)
def job_audio(path: c.JobPath, query: c.AudioQuery):
    job = load_job(path.job_id)
    if job.status != JobStatus.SUCCEEDED or not job.audio_key:
        raise AppError(409, "not_ready", f"There is no audio: the job is {job.status.value}.")
    svc = services()
    name = f"story-{job.id}.mp3"
    presigned = svc.storage.presigned_url(job.audio_key, svc.settings.audio_url_ttl, "audio/mpeg", name)
    if presigned:
        return redirect(presigned, code=302)
    file = svc.storage.local_path(job.audio_key)
    if file is None or not file.is_file():
        raise AppError(404, "audio_missing", "The audio file is missing from storage.")
    response = send_file(
        file,
        mimetype="audio/mpeg",
        download_name=name,
        conditional=True,
        as_attachment=query.download == "1",
        max_age=3600,
    )
    response.cache_control.public = False  # an owner's audio: browsers may keep it, shared caches not
    response.cache_control.private = True
    return response


@bp.get(
    "/jobs/<job_id>/subtitles.vtt",
    tags=JOBS,
    summary="Get a job's word-timed subtitles",
    # Served from here (it is small), so a page's <track> stays same-origin.
    description="WebVTT with one cue per word of the story as spoken (numbers spelled out), timed to the MP3; a "
    'written word read as several (`$5`: "five dollars") is one cue. The cue identifier `w<n>` is the index of that '
    "word in the story split at whitespace.",
    security=c.ANYONE,
    responses={
        200: c.media("The WebVTT file.", "text/vtt", pattern="^WEBVTT"),
        **c.API,
        404: c.error(404, E.not_found, E.subtitles_missing),
        409: c.error(409, E.not_ready),
        429: c.RATE_LIMITED,
        503: c.STORAGE_DOWN,
    },
)
def job_subtitles(path: c.JobPath):
    job = load_job(path.job_id)
    if job.status != JobStatus.SUCCEEDED or not job.audio_key:
        raise AppError(409, "not_ready", f"There are no subtitles: the job is {job.status.value}.")
    data = None
    if job.subtitles_key:  # None: the job finished before subtitles were made
        try:
            data = services().storage.get(job.subtitles_key)
        except StorageNotFound:
            pass
    if data is None:
        raise AppError(404, "subtitles_missing", "This job has no subtitles in storage.")
    response = Response(data, content_type="text/vtt; charset=utf-8")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get(
    "/jobs/<job_id>/image",
    tags=JOBS,
    summary="Get a job's photo",
    security=c.ANYONE,
    responses={
        200: c.media("The uploaded photo, with its own image type.", "image/*", format="binary"),
        **c.API,
        404: c.error(404, E.not_found, E.image_missing),
        429: c.RATE_LIMITED,
        503: c.STORAGE_DOWN,
    },
)
def job_image(path: c.JobPath):
    job = load_job(path.job_id)
    try:
        data = services().storage.get(job.input_key or files.input_key(job.id))
    except StorageNotFound:
        raise AppError(404, "image_missing", "The uploaded photo is no longer stored.") from None
    response = Response(data, mimetype=job.content_type or "application/octet-stream")
    response.headers["Cache-Control"] = "private, max-age=3600"
    # The bytes are the uploader's, stored as sent: opened on their own they are a download, and
    # nothing in them runs as a page of ours (an <img> still shows them).
    response.headers["Content-Disposition"] = f'attachment; filename="photo-{job.id}"'
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response
