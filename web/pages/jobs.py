"""HTML pages: the upload form and a job page that updates itself (and still works without JS)."""

from __future__ import annotations

import json

import redis
from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from narrator_client.job import WORDS_MAX, WORDS_MIN
from shared.jobs import JobStatus
from web.api import languages as languages_api
from web.api import styles as styles_api
from web.api.jobs import etag, job_view, load_job
from web.jobs import actions
from web.jobs.submit import create_job_from_request
from web.middleware.auth import SESSION_FIELD, current_owner, new_session_id, same_origin
from web.middleware.errors import AppError, error_response
from web.middleware.metrics import remember_rejection
from web.pages import albums
from web.pages.status_text import MESSAGES, STEPS, status_text, step_states
from web.services import services

bp = Blueprint("pages", __name__)
RECENT = 10  # stories listed on the home page


def recent_stories() -> list[dict]:
    """The caller's latest jobs (a browser: its session's) for the home page; none without an
    owner, and none rather than an error page while Redis is down."""
    owner = current_owner()
    if owner is None:
        return []
    try:
        jobs, _ = services().jobs.list(limit=RECENT, owner=owner)
    except redis.RedisError as exc:
        current_app.logger.warning("recent stories unavailable: %s", exc)
        return []
    return [
        {
            "id": job.id,
            "status": JobStatus(job.status).value,
            "filename": job.filename,
            "created_at": job.to_dict()["created_at"],
            "caption": job.caption,
        }
        for job in jobs
    ]


def form_page(error: str | None = None, status: int = 200, words: str = ""):
    settings = services().settings
    return render_template(
        "index.html",
        error=error,
        words_min=WORDS_MIN,
        words_max=WORDS_MAX,
        default_words=settings.story_words,
        max_mb=settings.max_upload_mb,
        max_photos=albums.MAX_PHOTOS,
        styles=styles_api.configured(),
        style=sent_style(),
        languages=languages_api.configured(),
        language=sent_style("language"),
        words=words,
        recent=recent_stories(),
    ), status


def sent_words() -> str:
    """What the user typed for the length, to put back into the form after an error (a photo
    cannot be put back: browsers never prefill file inputs). A body over the size limit has no
    readable form, hence the guard."""
    try:
        return (request.form.get("words") or "")[:10]
    except RequestEntityTooLarge:
        return ""


def sent_style(field: str = "style") -> str:
    """The style (or language) chosen before a form error, so the select keeps it (blank: the default)."""
    if request.method != "POST":
        return ""
    try:
        return (request.form.get(field) or "")[:40]
    except RequestEntityTooLarge:
        return ""


@bp.before_request
def _same_origin_posts_only():
    """CSRF: a form post must come from one of our own pages (Origin, else Referer, is the app's
    public origin); another site's post is refused before it does anything."""
    if request.method not in ("GET", "HEAD", "OPTIONS") and not same_origin():
        return error_response(
            403,
            "cross_site_request",
            "This form was sent from another site (or without an Origin or Referer "
            "header), so it was refused. Use the form on this site.",
        )
    return None


@bp.get("/")
def index():
    return form_page()


@bp.get("/jobs")
def jobs_address():
    """The address bar shows /jobs after a form error; reloading or revisiting it lands on the form."""
    return redirect(url_for("pages.index"), code=303)


@bp.post("/jobs")
def submit():
    # A browser's jobs belong to its session, made by its first submit (kept only if that succeeds).
    owner, new_session = current_owner(), None
    if owner is None:
        new_session = new_session_id()
        owner = f"session:{new_session}"
    try:
        photos = albums.form_photos()
        if len(photos) > 1:  # an album: every photo its own job, all on one page (web/pages/albums.py)
            location = url_for("albums.album_page", album_id=albums.create_album(photos, owner))
        else:
            location = url_for("pages.job_page", job_id=create_job_from_request(owner=owner).id)
    except AppError as exc:
        remember_rejection(exc.code)  # an album's photo is checked outside create_job_from_request
        return form_page(exc.message, exc.status, sent_words())
    except albums.TooManyPhotos as exc:
        return form_page(str(exc), 400, sent_words())
    except RequestEntityTooLarge:
        return form_page(albums.too_large_message(), 413)
    if new_session is not None:
        session.permanent = True  # PERMANENT_SESSION_LIFETIME, renewed by each visit
        session[SESSION_FIELD] = new_session
    # 303: the browser follows with a GET, so reloading the job page never resubmits the photo.
    return redirect(location, code=303)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    job = job_view(load_job(job_id))
    finished = JobStatus(job["status"]).finished
    return render_template(
        "job.html",
        job=job,
        etag=etag(job),  # the first poll asks for anything newer than what this page shows
        steps=step_states(job),
        status_text=status_text(job),
        finished=finished,
        messages=json.dumps(MESSAGES),
        step_list=json.dumps(STEPS),
    )


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    job = load_job(job_id)
    services().jobs.cancel(job.id)  # a job that finished meanwhile simply stays finished
    return redirect(url_for("pages.job_page", job_id=job.id), code=303)


@bp.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    actions.erase(services(), load_job(job_id))  # the photo, the audio, the record: all of it
    return redirect(url_for("pages.index"), code=303)
