"""Turning an upload into a queued job, shared by the JSON API and the HTML form.

Order matters: every check runs before anything is stored or queued, and a failure after the
image is stored undoes what was done, so clients never see half-created jobs.
"""
from __future__ import annotations

import io
import re
import unicodedata
from typing import Optional

from flask import current_app, request
from PIL import Image

from shared.images import ImageError, load_image
from shared.jobs import Job, new_job_id
from web.errors import AppError
from web.services import services

WORDS_MIN, WORDS_MAX = 10, 200
SEED_MAX = 2**32 - 1  # what torch/numpy seeding accepts everywhere
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded", "")


def parse_int(raw: Optional[str], name: str, low: int, high: int) -> Optional[int]:
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if len(raw) > 12 or not re.fullmatch(r"[+-]?\d+", raw):
        raise AppError(400, f"invalid_{name}", f"'{name}' must be a whole number from {low} to {high}.")
    value = int(raw)
    if not low <= value <= high:
        raise AppError(400, f"invalid_{name}", f"'{name}' must be a whole number from {low} to {high}.")
    return value


def clean_filename(name: Optional[str]) -> Optional[str]:
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return name[:200] or None


def check_request_size() -> None:
    """Decide on Content-Length alone, before a byte of the body is read."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise AppError(413, "too_large", f"The upload is larger than the {current_app.config['MAX_UPLOAD_MB']:g} MB limit.")


def read_image_field(limit: int) -> tuple[bytes, Optional[str]]:
    if request.mimetype not in FORM_TYPES:
        raise AppError(415, "unsupported_media_type",
                       "Send the photo as multipart/form-data in the field 'image'.")
    upload = request.files.get("image")  # parsing is capped by MAX_CONTENT_LENGTH while it reads
    data = upload.stream.read(limit + 1) if upload is not None else b""  # at most one byte past
    # A browser sends an empty part with no filename when no file was chosen.
    if upload is None or (not data and not upload.filename):
        raise AppError(400, "missing_image", "Choose a photo to upload (form field 'image').")
    if len(data) > limit:
        raise AppError(413, "too_large", f"The photo is larger than the {current_app.config['MAX_UPLOAD_MB']:g} MB limit.")
    return data, clean_filename(upload.filename)


def validate_image(data: bytes, max_pixels: int) -> str:
    """Raise AppError for anything that is not a usable photo; return its MIME type."""
    try:
        load_image(data, max_pixels)
    except ImageError as exc:
        raise AppError(exc.http_status, exc.code, exc.message) from None
    except Exception as exc:  # a decoder choking on hostile bytes is still the client's input
        raise AppError(415, "not_an_image", f"The file could not be decoded as an image ({type(exc).__name__}).") from None
    with Image.open(io.BytesIO(data)) as img:  # header only: the format was accepted above
        return Image.MIME.get(img.format or "", "application/octet-stream")


def create_job_from_request() -> Job:
    svc = services()
    settings = svc.settings
    check_request_size()
    data, filename = read_image_field(settings.max_upload_bytes)
    words = parse_int(request.form.get("words"), "words", WORDS_MIN, WORDS_MAX) or settings.story_words
    seed = parse_int(request.form.get("seed"), "seed", 0, SEED_MAX)
    content_type = validate_image(data, settings.max_image_pixels)

    job = Job(id=new_job_id(), words=words, seed=seed, content_type=content_type, filename=filename)
    job.input_key = f"inputs/{job.id}"
    svc.ensure_storage()
    svc.storage.put(job.input_key, data, content_type)
    try:
        svc.jobs.create(job)
    except Exception:
        _discard(svc, job, job_created=False)
        raise
    try:
        svc.enqueue(job.id)
    except Exception as exc:
        current_app.logger.warning("enqueue of %s failed: %s", job.id, exc)
        _discard(svc, job, job_created=True)
        raise AppError(503, "queue_unavailable", "The job queue is unavailable; try again shortly.") from None
    return job


def _discard(svc, job: Job, job_created: bool) -> None:
    """Best effort: the client gets an error and no id, so nothing should remain behind."""
    try:
        if job_created:
            svc.jobs.delete(job.id)
        svc.storage.delete(job.input_key)
    except Exception as exc:  # the original error is the one worth reporting
        current_app.logger.warning("cleanup of %s failed: %s", job.id, exc)
