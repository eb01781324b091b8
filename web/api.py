"""JSON API under /api/v1: submit a photo, poll the job, fetch the audio and subtitles, cancel, list."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify, redirect, request, send_file, url_for

from narrator_client.job import JOB_ID_PATTERN
from shared.jobs import Job, JobStatus
from shared.jobs.public import public_model
from shared.storage import StorageNotFound
from shared.webhooks import notify_finished
from web.auth import current_owner, may_see, require_owner
from web.errors import AppError, error_response
from web.idempotency import REPLAYED_HEADER, IdempotentSubmit
from web.job_events import JobEvents, applied_wait, parse_wait, preferred_wait
from web.services import services
from web.uploads import create_job_from_request, parse_int

bp = Blueprint("api", __name__, url_prefix="/api/v1")

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
    """This app's one subscription to job changes (web/job_events.py), made on the first wait."""
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


def job_view(job: Job) -> dict:
    """The job as the API answers it: the model webhooks carry too, with this request's URLs."""
    return public_model(job, audio_url(job), subtitles_url(job)).model_dump(mode="json")


@bp.post("/jobs")
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


@bp.get("/jobs")
def list_jobs():
    """The caller's own jobs, newest first (ownerless jobs are never listed)."""
    owner = require_owner()
    limit = parse_int(request.args.get("limit"), "limit", 1, 100) or 20
    cursor = request.args.get("cursor") or None
    try:
        if cursor is not None and len(cursor) > 200:
            raise ValueError(cursor)
        jobs, next_cursor = services().jobs.list(limit=limit, cursor=cursor, owner=owner)
    except ValueError:
        raise AppError(400, "invalid_cursor", "The cursor is not one this API returned.") from None
    return jsonify(jobs=[job_view(job) for job in jobs], next_cursor=next_cursor)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """With `?wait=S` a long poll: the answer comes when the job's status or stage changes (at once
    when it is final), or after S seconds, and is then exactly what a plain GET answers."""
    wait = parse_wait(request.args.get("wait"))
    job = load_job(job_id) if wait is None else await_job(job_id, wait, moved)
    return jsonify(job_view(job))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    services().jobs.cancel(load_job(job_id).id)  # load_job first: an unknown id is a 404
    job = load_job(job_id)
    if job.status != JobStatus.CANCELED:  # canceling twice is harmless; finished is final
        raise AppError(409, "already_finished", f"The job has already {job.status.value}.")
    notify_finished(services().celery, services().jobs, [job.id])  # its webhook, once (never raises)
    # The worker sees the canceled status at its next transition and stops there.
    return jsonify(job_view(job))


@bp.get("/jobs/<job_id>/audio")
def job_audio(job_id: str):
    job = load_job(job_id)
    if job.status != JobStatus.SUCCEEDED or not job.audio_key:
        raise AppError(409, "not_ready", f"There is no audio: the job is {job.status.value}.")
    svc = services()
    name = f"story-{job.id}.mp3"
    presigned = svc.storage.presigned_url(job.audio_key, svc.settings.audio_url_ttl, "audio/mpeg", name)
    if presigned:
        return redirect(presigned, code=302)
    path = svc.storage.local_path(job.audio_key)
    if path is None or not path.is_file():
        raise AppError(404, "audio_missing", "The audio file is missing from storage.")
    response = send_file(
        path,
        mimetype="audio/mpeg",
        download_name=name,
        conditional=True,
        as_attachment=request.args.get("download") == "1",
        max_age=3600,
    )
    response.cache_control.public = False  # an owner's audio: browsers may keep it, shared caches not
    response.cache_control.private = True
    return response


@bp.get("/jobs/<job_id>/subtitles.vtt")
def job_subtitles(job_id: str):
    """WebVTT of the spoken words; served from here (it is small), so a page's <track> stays same-origin."""
    job = load_job(job_id)
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


@bp.get("/jobs/<job_id>/image")
def job_image(job_id: str):
    job = load_job(job_id)
    try:
        data = services().storage.get(job.input_key or f"inputs/{job.id}")
    except StorageNotFound:
        raise AppError(404, "image_missing", "The uploaded photo is no longer stored.") from None
    response = Response(data, mimetype=job.content_type or "application/octet-stream")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
