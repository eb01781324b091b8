"""JSON API under /api/v1: submit a photo, poll the job, fetch the audio, cancel, list."""
from __future__ import annotations

import re
from typing import Optional

from flask import Blueprint, Response, jsonify, redirect, request, send_file, url_for

from shared.jobs import Job, JobStatus
from shared.storage import StorageNotFound
from web.errors import AppError, error_response
from web.idempotency import REPLAYED_HEADER, IdempotentSubmit
from web.services import services
from web.uploads import create_job_from_request, parse_int

bp = Blueprint("api", __name__, url_prefix="/api/v1")

# Ids come from secrets.token_urlsafe; anything else cannot be a job, so Redis is not even asked.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PUBLIC_FIELDS = ("id", "status", "stage", "created_at", "started_at", "finished_at", "caption", "story",
                 "audio_url", "audio_seconds", "error", "timings", "words", "seed", "filename", "attempts")


def load_job(job_id: str) -> Job:
    job = services().jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise AppError(404, "not_found", "No such job (it may have expired).")
    return job


def audio_url(job: Job) -> Optional[str]:
    """Absolute URL of the audio endpoint: it never expires, and it redirects to a fresh presigned
    URL on S3, so the value stays fetchable with a plain GET for as long as the job exists."""
    if job.status != JobStatus.SUCCEEDED or not job.audio_key:
        return None
    return url_for("api.job_audio", job_id=job.id, _external=True)


def job_view(job: Job) -> dict:
    data = job.to_dict()
    data["audio_url"] = audio_url(job)
    return {name: data.get(name) for name in PUBLIC_FIELDS}


@bp.post("/jobs")
def submit():
    # Checked before the body is read; a replay answers 200 with the job's current state.
    idempotency = IdempotentSubmit.from_headers(request.headers)
    try:
        job = create_job_from_request(idempotency)
    except AppError as exc:
        if exc.code != "idempotency_key_in_use":
            raise
        return error_response(exc.status, exc.code, exc.message, {"Retry-After": "1"})
    response = jsonify(job_view(job))
    response.status_code = 202
    if idempotency is not None and idempotency.replayed:
        response.status_code = 200
        response.headers[REPLAYED_HEADER] = "true"
    response.headers["Location"] = url_for("api.get_job", job_id=job.id)
    return response


@bp.get("/jobs")
def list_jobs():
    limit = parse_int(request.args.get("limit"), "limit", 1, 100) or 20
    cursor = request.args.get("cursor") or None
    try:
        if cursor is not None and len(cursor) > 200:
            raise ValueError(cursor)
        jobs, next_cursor = services().jobs.list(limit=limit, cursor=cursor)
    except ValueError:
        raise AppError(400, "invalid_cursor", "The cursor is not one this API returned.") from None
    return jsonify(jobs=[job_view(job) for job in jobs], next_cursor=next_cursor)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(job_view(load_job(job_id)))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    services().jobs.cancel(load_job(job_id).id)  # load_job first: an unknown id is a 404
    job = load_job(job_id)
    if job.status != JobStatus.CANCELED:  # canceling twice is harmless; finished is final
        raise AppError(409, "already_finished", f"The job has already {job.status.value}.")
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
    return send_file(path, mimetype="audio/mpeg", download_name=name, conditional=True,
                     as_attachment=request.args.get("download") == "1", max_age=3600)


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
