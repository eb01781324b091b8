"""What a job is: its statuses and stages, the Job record, and how it is stored in a Redis hash.

Pure data and encoding; the Redis reads and writes are JobStore's (store.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import Enum

# The statuses and stages are part of the API's contract: defined with the public job's model.
from narrator_client.job import JobStatus, Stage

_FLOATS = ("created_at", "started_at", "finished_at", "audio_seconds", "deadline_at")
_INTS = ("words", "seed", "batch_size", "attempts", "runs", "lone_deaths")
_BOOLS = ("cached",)


def new_job_id() -> str:
    """128 random bits, URL-safe: ids double as the capability to see a job, so they must not be guessable."""
    return secrets.token_urlsafe(16)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    status: JobStatus = JobStatus.QUEUED
    stage: Stage | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    caption: str | None = None
    story: str | None = None
    audio_key: str | None = None
    audio_seconds: float | None = None
    subtitles_key: str | None = None  # the WebVTT of the spoken words, stored with the audio
    error: str | None = None
    timings: dict = field(default_factory=dict)
    words: int | None = None
    seed: int | None = None
    # The story style (shared/styles.py) resolved at submit: the default's name when the job named
    # none; None when no styles are configured (the base model, or STORY_ADAPTER).
    style: str | None = None
    # The narration language (shared/languages.py), an ISO 639-3 code resolved at submit: the
    # default's when the job named none. None only on jobs stored before languages existed (English).
    language: str | None = None
    input_key: str | None = None
    content_type: str | None = None
    filename: str | None = None
    # Who may see the job: "key:<name>" (an API key), "session:<id>" (a browser session), or None
    # (an anonymous API call: reachable by its id only, never listed).
    owner: str | None = None
    # An ownerless job's place in the round-robin and in MAX_QUEUED_PER_OWNER: its client's network
    # ("addr:<IPv4>" or "addr:<IPv6 /64>"), so one address cannot take many turns. None: the owner's.
    lane: str | None = None
    webhook: str | None = None  # POSTed (signed) when the job ends
    # How many runs were started, a handed-back one not counted: more than one means a run died, and
    # the job then runs alone.
    attempts: int = 0
    # Runs alone that ended with their worker dying: what MAX_ATTEMPTS counts (a death in a batch may
    # be any of its photos' doing).
    lone_deaths: int = 0
    # Runs started, a handed-back one included (attempts does not count those): a job run more
    # than once may have a lost run's files in storage to tidy.
    runs: int = 0
    # Succeeded at submit from the result cache (shared/result_cache.py), without a run of its own.
    cached: bool = False
    # A job not started by then never runs: the claim that meets it fails it (EXPIRED_MESSAGE).
    deadline_at: float | None = None
    retry_of: str | None = None  # the failed or canceled job this one retries (same photo and fields)
    image_sha256: str | None = None  # the photo's, for the result cache's key (seeded jobs only)
    # Worker bookkeeping (not shown by the API): the run that holds the job (its lease is its score
    # in jobs:running, on Redis's clock), and how many jobs shared its batch.
    worker: str | None = None
    batch_size: int | None = None

    @property
    def queue_owner(self) -> str:
        """Whose queue the job waits in (queues.lua's owner_name)."""
        return self.lane or self.owner or "-"

    def to_dict(self) -> dict:
        """JSON-ready: enum values as strings, timestamps as ISO 8601 UTC."""
        out = asdict(self)
        out["status"] = JobStatus(self.status).value
        out["stage"] = Stage(self.stage).value if self.stage else None
        for name in ("created_at", "started_at", "finished_at", "deadline_at"):
            out[name] = iso(out[name])
        return out

    def to_redis(self) -> dict[str, str]:
        return {
            k: v for k, v in ((f.name, encode(f.name, getattr(self, f.name))) for f in fields(self)) if v is not None
        }

    @classmethod
    def from_redis(cls, raw: dict) -> Job:
        data = {_text(k): _text(v) for k, v in raw.items()}
        known = {f.name for f in fields(cls)}
        kwargs: dict = {k: v for k, v in data.items() if k in known}
        for name in _FLOATS:
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        for name in _INTS:
            if name in kwargs:
                kwargs[name] = int(kwargs[name])
        for name in _BOOLS:
            if name in kwargs:
                kwargs[name] = kwargs[name] == "1"
        kwargs["status"] = JobStatus(kwargs.get("status", "queued"))
        kwargs["stage"] = Stage(kwargs["stage"]) if kwargs.get("stage") else None
        kwargs["timings"] = json.loads(kwargs["timings"]) if kwargs.get("timings") else {}
        return cls(**kwargs)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def encode(name: str, value) -> str | None:
    """How one field is stored in the Redis hash; None means 'remove the field'."""
    if value is None:
        return None
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "1" if value else None  # False is the default: no field at all
    if name == "timings":
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises ValueError for anything that is not a cursor this module made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split(":", 1)
        value = float(score)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("invalid cursor") from exc
    if not math.isfinite(value):  # nan/inf parse as floats, but Redis refuses them as scores
        raise ValueError("invalid cursor")
    return value, job_id
