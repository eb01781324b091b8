"""Several photos in one form post: each photo becomes its own job, and `/albums/<id>` shows them all.

- Up to MAX_PHOTOS photos, each within MAX_UPLOAD_MB; the form's body may be that many photos big,
  while the API stays at one photo per request (its limits are the app's, web/app.py).
- All or nothing: every photo is checked (size, format, pixels) before any is stored, and one bad
  photo refuses the whole post, naming every file that failed, so no half-made album exists and the
  user fixes the selection once. `words`, `seed` (...) apply to every photo.
- The album, `album:<id>` in Redis (its owner and job ids), expires with the jobs; only its owner's
  session sees it, anyone else gets the 404 an unknown album gets.
- SUBMIT_RATE_LIMIT counts a post once in its short windows and each photo in its windows of a
  minute or more (web/middleware/limits.py).
"""

from __future__ import annotations

import json
import time

from flask import Blueprint, g, jsonify, render_template, request, url_for

from shared.jobs import Job, JobStatus, JobStore, new_job_id
from web.api.jobs import JOB_ID, job_view
from web.jobs.submit import _discard, clean_filename, create_job, guard_request_body, validate_image
from web.middleware.auth import current_owner
from web.middleware.errors import AppError
from web.middleware.metrics import SUBMITTED, remember_rejection
from web.pages.status_text import MESSAGES, STEPS, status_text, step_states
from web.services import services

bp = Blueprint("albums", __name__)
MAX_PHOTOS = 20
OTHER_PARTS = 16  # the form's fields next to its photos (words, seed, ...), as MAX_FORM_PARTS allows one photo
PART_OVERHEAD = 64 * 1024  # each photo's multipart framing, with room to spare


class TooManyPhotos(Exception):
    """A form-only error (the API takes one photo per request): the form shows the message."""


def allow_album_body() -> None:
    """This request (the form's post) may carry MAX_PHOTOS photos; set before its body is read."""
    photo = services().settings.max_upload_bytes
    request.max_content_length = MAX_PHOTOS * (photo + PART_OVERHEAD)
    request.max_form_parts = MAX_PHOTOS + OTHER_PARTS


def form_photos() -> list:
    """The form post's chosen files (parsed once per request): the `image` parts with a file name.
    A browser sends one empty part without a name when no file was chosen."""
    if "narrator_photos" not in g:
        allow_album_body()
        if (request.content_length or 0) > (request.max_content_length or 0):  # before a byte is read
            raise AppError(413, "too_large", too_large_message())
        guard_request_body()
        g.narrator_photos = [part for part in request.files.getlist("image") if part.filename]
    return g.narrator_photos


def too_large_message() -> str:
    mb = services().settings.max_upload_mb
    return f"The upload is too large: up to {MAX_PHOTOS} photos of up to {mb:g} MB each (or too many form fields)."


def check_photos(photos: list) -> list[tuple]:
    """(upload, file name, MIME type) of each photo, once all passed; else the first problem's error
    naming every photo that failed. One photo at a time is in memory (the parser spools the rest)."""
    settings = services().settings
    if len(photos) > MAX_PHOTOS:
        remember_rejection("too_many_photos")
        raise TooManyPhotos(f"You chose {len(photos)} photos; choose at most {MAX_PHOTOS} at a time.")
    limit, checked, problems = settings.max_upload_bytes, [], []
    for number, upload in enumerate(photos, 1):
        name = clean_filename(upload.filename) or f"photo {number}"
        data = upload.stream.read(limit + 1)
        try:
            if len(data) > limit:
                raise AppError(413, "too_large", f"larger than the {settings.max_upload_mb:g} MB limit")
            checked.append((upload, name, validate_image(data, settings.max_image_pixels)))
        except AppError as exc:
            problems.append((name, exc))
    if problems:
        first = problems[0][1]
        listed = "; ".join(f"{name}: {exc.message.rstrip('.')}" for name, exc in problems)
        raise AppError(
            first.status,
            first.code,
            f"Nothing was uploaded: {len(problems)} of the {len(photos)} photos could not be used "
            f"({listed}). Choose the photos again without those.",
        )
    return checked


def create_album(photos: list, owner: str) -> str:
    """Check every photo, then create a job for each and the album; returns the album's id."""
    svc = services()
    checked = check_photos(photos)
    most = svc.settings.max_queued_per_owner
    if svc.jobs.queued_count(owner) + len(checked) > most:
        raise AppError(
            429,
            "too_many_queued",
            f"These photos would put more than {most} of your jobs in the queue; "
            "submit more once some have started (or cancel some).",
        )
    jobs: list[Job] = []
    try:
        for upload, name, content_type in checked:
            upload.stream.seek(0)
            jobs.append(create_job(upload.stream.read(), name, owner, content_type=content_type))
        album_id = new_job_id()
        record = {"owner": owner, "jobs": [job.id for job in jobs], "created_at": time.time()}
        svc.redis.set(album_key(album_id), json.dumps(record), ex=svc.jobs.ttl)
    except BaseException:  # as with one photo: the user gets an error and nothing stays behind
        for job in jobs:
            _discard(svc, job, job_created=True)
        raise
    SUBMITTED.labels("form").inc(len(jobs) - 1)  # web/middleware/metrics.py counts the post's redirect as one
    return album_id


def album_key(album_id: str) -> str:
    return f"album:{album_id}"


def load_album(album_id: str) -> list[dict]:
    """The album's jobs as the API shows them (expired ones left out), if the caller owns it."""
    svc = services()
    raw = svc.redis.get(album_key(album_id)) if JOB_ID.fullmatch(album_id) else None
    record: dict | None = json.loads(raw) if raw else None
    if record is None or record.get("owner") != current_owner():
        raise AppError(404, "not_found", "No such album (it may have expired).")
    pipe = svc.redis.pipeline(transaction=False)
    for job_id in record["jobs"]:
        pipe.hgetall(JobStore.key(job_id))
    jobs = [Job.from_redis(raw) for raw in pipe.execute() if raw]
    return [job_view(job) for job in jobs if job.owner == record["owner"]]


@bp.get("/albums/<album_id>")
def album_page(album_id: str):
    jobs = load_album(album_id)
    cards = [
        {
            "job": job,
            "steps": step_states(job),
            "status_text": status_text(job),
            "finished": JobStatus(job["status"]).finished,
        }
        for job in jobs
    ]
    return render_template(
        "album.html",
        cards=cards,
        finished=all(card["finished"] for card in cards),
        feed=url_for("albums.album_jobs", album_id=album_id),
        messages=json.dumps(MESSAGES),
        step_list=json.dumps(STEPS),
    )


@bp.get("/albums/<album_id>/jobs")
def album_jobs(album_id: str):
    """What the album page polls: all its jobs in one request (READ_RATE_LIMIT counts it once)."""
    return jsonify(jobs=load_album(album_id))
