"""How a job's progress reads on a page: the steps and the status line (the job and album pages).

static/job.js draws the same from the JSON it polls; these give the first render, before any script runs.
"""

from __future__ import annotations

STEPS = [
    ("queued", "Waiting in the queue"),
    ("caption", "Describing the photo"),
    ("story", "Writing the story"),
    ("speech", "Reading it aloud"),
    ("upload", "Saving the audio"),
]
MESSAGES = {
    "queued": "Waiting for a worker…",
    "running": "Working: {stage}…",
    "succeeded": "Done: your story is ready.",
    "failed": "Failed: {error}",
    "canceled": "Canceled.",
}


def step_states(job: dict) -> list[dict]:
    """Mirrors stepStates() in static/job.js, so the first render matches what the script shows."""
    names = [name for name, _ in STEPS]
    status = job["status"]
    current = job["stage"] or ("queued" if not job["started_at"] else "caption")
    index = len(names) if status == "succeeded" else names.index(current) if current in names else 0
    here = {"failed": "failed", "canceled": "canceled"}.get(status, "current")
    return [
        {"name": name, "label": label, "state": "done" if i < index else here if i == index else "pending"}
        for i, (name, label) in enumerate(STEPS)
    ]


def status_text(job: dict) -> str:
    labels = dict(STEPS)
    return MESSAGES[job["status"]].format(
        stage=labels.get(job["stage"] or "", "starting").lower(), error=job["error"] or "unknown error"
    )
