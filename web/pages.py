"""HTML pages: the upload form and a job page that updates itself (and still works without JS)."""
from __future__ import annotations

import json

from flask import Blueprint, redirect, render_template, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from shared.jobs import JobStatus
from web.api import job_view, load_job
from web.errors import AppError
from web.services import services
from web.uploads import WORDS_MAX, WORDS_MIN, create_job_from_request

bp = Blueprint("pages", __name__)

STEPS = [("queued", "Waiting in the queue"), ("caption", "Describing the photo"),
         ("story", "Writing the story"), ("speech", "Reading it aloud"), ("upload", "Saving the audio")]
MESSAGES = {"queued": "Waiting for a worker…", "running": "Working: {stage}…",
            "succeeded": "Done: your story is ready.", "failed": "Failed: {error}", "canceled": "Canceled."}


def step_states(job: dict) -> list[dict]:
    """Mirrors stepStates() in static/job.js, so the first render matches what the script shows."""
    names = [name for name, _ in STEPS]
    status = job["status"]
    current = job["stage"] or ("queued" if not job["started_at"] else "caption")
    index = len(names) if status == "succeeded" else names.index(current) if current in names else 0
    here = {"failed": "failed", "canceled": "canceled"}.get(status, "current")
    return [{"name": name, "label": label,
             "state": "done" if i < index else here if i == index else "pending"}
            for i, (name, label) in enumerate(STEPS)]


def status_text(job: dict) -> str:
    labels = dict(STEPS)
    return MESSAGES[job["status"]].format(stage=labels.get(job["stage"] or "", "starting").lower(),
                                          error=job["error"] or "unknown error")


def form_page(error: str | None = None, status: int = 200):
    settings = services().settings
    return render_template("index.html", error=error, words_min=WORDS_MIN, words_max=WORDS_MAX,
                           default_words=settings.story_words, max_mb=settings.max_upload_mb), status


@bp.get("/")
def index():
    return form_page()


@bp.post("/jobs")
def submit():
    try:
        job = create_job_from_request()
    except AppError as exc:
        return form_page(exc.message, exc.status)
    except RequestEntityTooLarge:
        return form_page(f"The photo is larger than the {services().settings.max_upload_mb:g} MB limit.", 413)
    # 303: the browser follows with a GET, so reloading the job page never resubmits the photo.
    return redirect(url_for("pages.job_page", job_id=job.id), code=303)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    job = job_view(load_job(job_id))
    finished = JobStatus(job["status"]).finished
    return render_template("job.html", job=job, steps=step_states(job), status_text=status_text(job),
                           finished=finished, messages=json.dumps(MESSAGES), step_list=json.dumps(STEPS))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    job = load_job(job_id)
    services().jobs.cancel(job.id)  # a job that finished meanwhile simply stays finished
    return redirect(url_for("pages.job_page", job_id=job.id), code=303)
