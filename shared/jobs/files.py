"""Where a job's files live in storage: one function per kind of key, used by every reader and writer.

- `inputs/<id>`: the uploaded photo, as sent.
- `audio/<id>/<run>.mp3` and `subtitles/<id>/<run>.vtt`: what a run made, named after the run (the
  claimant's last part, or `cached` for a result copied at submit). A job has one result, but a run
  whose worker died after uploading may have left its own behind: `run_prefixes` lets the next
  run find and remove those. Each kind has its own prefix, so audio/<id>/ holds MP3s only.
"""

from __future__ import annotations

CACHED_RUN = "cached"  # the "run" of a result the result cache copied at submit


def run_name(run: str) -> str:
    """A claimant (`host:pid:run`) names its files by its last part, which is unique per run."""
    return run.rsplit(":", 1)[-1]


def input_key(job_id: str) -> str:
    return f"inputs/{job_id}"


def audio_key(job_id: str, run: str) -> str:
    return f"audio/{job_id}/{run_name(run)}.mp3"


def subtitles_key(job_id: str, run: str) -> str:
    return f"subtitles/{job_id}/{run_name(run)}.vtt"


def run_prefixes(job_id: str) -> tuple[str, str]:
    """The folders that hold every run's audio and subtitles of one job."""
    return f"audio/{job_id}/", f"subtitles/{job_id}/"
