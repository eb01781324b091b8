"""The result cache: a job with a `seed` whose photo, words, style, language and models match an
earlier job's succeeds at once from that job's result, without a worker (RESULT_CACHE, default on).

- The key is one function of (the photo's SHA-256, words, seed, style, language and its voice, the
  model settings, the result format's version), used by both sides: the worker, on success, writes `cache:<key>` with
  the result (never the audio bytes: the key of its MP3) for JOB_TTL_HOURS; a web submit looks it up.
  Each side computes it from its own settings, so web and workers must share the model settings:
  if they differ, lookups simply miss.
- A hit copies the source's MP3 to the new job's own key, so each job's audio lives as long as its
  job (the bucket's lifecycle rule ages each object from its own upload) and never vanishes with the
  job it came from. A source MP3 already gone is a miss, and the entry is dropped.
- Jobs without a seed are never cached: each of those is meant to be a new story.

Nothing here imports Flask, torch or the worker package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from shared import languages, styles
from shared.jobs import files
from shared.jobs.schema import Job, JobStatus
from shared.storage import Storage, StorageError, StorageNotFound

log = logging.getLogger(__name__)

# Bump when what a result is changes without any setting changing (prompt, MP3 encoding, ...):
# every older entry then misses.
RESULT_VERSION = 1
# Settings that make another result from the same photo and seed, besides the location of the job's
# style (STORY_STYLES). Device and dtype are left out: they change numerics, not the recipe.
MODEL_SETTINGS = (
    "caption_model",
    "story_model",
    "story_adapter",
    "speech_model",
    "quantize",
    "story_temperature",
    "story_top_p",
)


def applies(settings, seed: int | None) -> bool:
    return bool(getattr(settings, "result_cache", False)) and seed is not None


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_versions(settings, style: str | None = None) -> dict:
    versions = {name: getattr(settings, name, None) for name in MODEL_SETTINGS}
    versions["style_adapter"] = style_location(settings, style)
    return versions


def style_location(settings, style: str | None) -> str | None:
    """Where the style's adapter comes from: only that style's entry counts, so adding or moving
    another style leaves this one's results cached."""
    if not style:
        return None
    try:
        return styles.from_settings(settings).locations.get(style)
    except styles.StyleError:  # a server with such settings refuses to start; the name still keys it
        return None


def voice_location(settings, language: str) -> str | None:
    """Where the language's voice comes from (LANGUAGES, else SPEECH_MODEL for English): only that
    language's entry counts, as for styles."""
    try:
        return languages.from_settings(settings).locations.get(language)
    except languages.LanguageError:  # a server with such settings refuses to start
        return None


def cache_key(
    settings, image_sha256: str, words: int | None, seed: int, style: str | None, language: str | None = None
) -> str:
    recipe = {
        "v": RESULT_VERSION,
        "image": image_sha256,
        "words": words,
        "seed": seed,
        "style": style,
        "models": model_versions(settings, style),
    }
    if language:  # the story's language and the voice that speaks it
        recipe["language"] = {"code": language, "voice": voice_location(settings, language)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def job_key(settings, job: Job) -> str | None:
    """The key of a job's result, or None for a job the cache does not serve."""
    if not job.image_sha256 or job.seed is None:
        return None
    return cache_key(
        settings, job.image_sha256, job.words, job.seed, getattr(job, "style", None), getattr(job, "language", None)
    )


def redis_key(key: str) -> str:
    return f"cache:{key}"


def remember(redis_client, ttl_seconds: int, key: str, job: Job) -> None:
    """The worker, once `job` succeeded: its result now answers every submit with the same key."""
    entry = {
        "job_id": job.id,
        "audio_key": job.audio_key,
        "subtitles_key": getattr(job, "subtitles_key", None),
        "caption": job.caption,
        "story": job.story,
        "audio_seconds": job.audio_seconds,
        "timings": job.timings,
        "finished_at": job.finished_at,
    }
    redis_client.set(redis_key(key), json.dumps(entry), ex=max(1, int(ttl_seconds)))


def lookup(redis_client, key: str) -> dict | None:
    raw = redis_client.get(redis_key(key))
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
        return entry if isinstance(entry, dict) and entry.get("audio_key") else None
    except ValueError:
        return None


def serve(redis_client, storage: Storage, settings, job: Job) -> bool:
    """Make `job` (not yet stored) a succeeded copy of a cached result when there is one; False on a
    miss. The caller creates the record as usual; the MP3 copy is already stored under the job's key."""
    key = job_key(settings, job)
    if key is None:
        return False
    try:
        entry = lookup(redis_client, key)
    except Exception as exc:  # Redis trouble: a miss; creating the job meets it and answers for it
        log.warning("result cache: lookup for job %s failed: %s", job.id, exc)
        return False
    if entry is None:
        return False
    audio = files.audio_key(job.id, files.CACHED_RUN)
    try:
        storage.put(audio, storage.get(entry["audio_key"]), content_type="audio/mpeg")
    except StorageNotFound:  # the source's MP3 expired or was removed: the entry answers nothing
        redis_client.delete(redis_key(key))
        return False
    except StorageError as exc:  # storage trouble: a miss, and the job runs as any other
        log.warning("result cache: could not copy %s for job %s: %s", entry["audio_key"], job.id, exc)
        return False
    if entry.get("subtitles_key") and hasattr(job, "subtitles_key"):
        job.subtitles_key = _copy_subtitles(storage, entry["subtitles_key"], job.id)
    now = time.time()
    job.status, job.cached, job.audio_key = JobStatus.SUCCEEDED, True, audio
    job.caption, job.story = entry.get("caption"), entry.get("story")
    job.audio_seconds = float(entry.get("audio_seconds") or 0)
    job.timings = entry.get("timings") or {}  # those of the run that made the result
    job.started_at = job.finished_at = max(now, job.created_at)
    return True


def _copy_subtitles(storage: Storage, source: str, job_id: str) -> str | None:
    """The subtitles go with the MP3 when they are there; a job without them still has its story."""
    target = files.subtitles_key(job_id, files.CACHED_RUN)
    try:
        storage.put(target, storage.get(source), content_type="text/vtt; charset=utf-8")
        return target
    except StorageError as exc:
        log.warning("result cache: no subtitles for job %s (%s)", job_id, exc)
        return None
