"""`python -m narrator_client narrate photo.jpg -o story.mp3`: submit, follow the stages, save the MP3.

Exit status: 0 the story is saved; 1 the job failed or was canceled, the service could not be reached
or the wait timed out; 2 bad usage or input (a missing photo, a request the API refused).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from narrator_client.client import DEFAULT_URL, Client, new_idempotency_key
from narrator_client.errors import ApiError, JobFailed, NarratorError, RateLimited, ServiceUnavailable
from narrator_client.job import Job

STEPS = [
    ("queued", "waiting for a worker"),
    ("caption", "describing the photo"),
    ("story", "writing the story"),
    ("speech", "reading it aloud"),
    ("upload", "saving the audio"),
]
SUBMIT_TRIES = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m narrator_client", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    narrate = commands.add_parser("narrate", help="turn a photo into a narrated story (an MP3)")
    narrate.add_argument("photo", type=Path)
    narrate.add_argument("-o", "--output", type=Path, help="where to write the MP3 (default: PHOTO's name .mp3)")
    narrate.add_argument("--words", type=int, help="story length in words")
    narrate.add_argument("--seed", type=int, help="makes the story reproducible")
    narrate.add_argument("--style", help="a story style the service offers")
    narrate.add_argument("--language", help="the story's language, an ISO 639-3 code the service offers (deu, hin)")
    narrate.add_argument(
        "--url",
        default=os.environ.get("NARRATOR_URL") or DEFAULT_URL,
        help="the service (default: $NARRATOR_URL, then %(default)s)",
    )
    narrate.add_argument(
        "--api-key", default=os.environ.get("NARRATOR_API_KEY"), help="an API key (default: $NARRATOR_API_KEY)"
    )
    narrate.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the story")
    narrate.add_argument("--json", action="store_true", help="print the finished job as JSON, no progress bar")
    return parser.parse_args(argv)


# What a refusal was about, by its status: the key, the request's size or pace, the service, else the photo.
REFUSED = {401: "the API key", 413: "the photo's size", 429: "the request (too many)", 503: "the request for now"}


def refused(exc: ApiError) -> str:
    return REFUSED.get(exc.status, "the photo")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = Client(args.url, api_key=args.api_key)
    output = args.output or args.photo.with_suffix(".mp3")
    if not args.photo.is_file():
        return fail(f"{args.photo}: no such file", 2)
    folder = output.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return fail(f"{output}: cannot write there (is {folder} an existing, writable folder?)", 2)
    try:
        job = submit(client, args)
    except OSError as exc:
        return fail(f"{args.photo}: cannot read it ({exc.strerror or exc})", 2)
    except ApiError as exc:
        return fail(f"the service refused {refused(exc)}: {exc.message} ({exc.code})", 1 if exc.status >= 500 else 2)
    except NarratorError as exc:
        return fail(str(exc), 1)
    progress = Progress(enabled=not args.json and sys.stderr.isatty())
    try:
        job = client.wait(job.id, timeout=args.timeout, on_update=progress.update)
        client.download(job.id, output)
    except OSError as exc:
        progress.close()
        return fail(f"{output}: cannot write it ({exc.strerror or exc})", 1)
    except JobFailed as exc:
        progress.close()
        return finish(args, exc.job, f"the job {exc.job.status.value}: {exc.job.error or 'no story'}", 1)
    except NarratorError as exc:
        progress.close()
        return fail(str(exc), 1)
    progress.close()
    if args.json:
        print(json.dumps({**job.model_dump(mode="json"), "output": str(output)}))
    else:
        print(job.story or "")
        print(f"\nsaved {output} ({job.audio_seconds or 0:.1f} s of audio)", file=sys.stderr)
    return 0


def submit(client: Client, args: argparse.Namespace) -> Job:
    """One job, even when a submit must be retried (the Idempotency-Key makes a retry safe)."""
    key = new_idempotency_key()
    for attempt in range(1, SUBMIT_TRIES + 1):
        try:
            return client.submit(
                args.photo,
                words=args.words,
                seed=args.seed,
                style=args.style,
                language=args.language,
                idempotency_key=key,
            )
        except (RateLimited, ServiceUnavailable) as exc:
            if attempt == SUBMIT_TRIES or exc.code == "too_many_queued":
                raise
            client.sleep(exc.retry_after or attempt)
    raise AssertionError("unreachable")


def fail(message: str, status: int) -> int:
    print(f"narrator: {message}", file=sys.stderr)
    return status


def finish(args: argparse.Namespace, job: Job, message: str, status: int) -> int:
    if args.json:
        print(json.dumps(job.model_dump(mode="json")))
    return fail(message, status)


class Progress:
    """A bar over the stages; silent when stderr is not a terminal or --json is given."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(STEPS), file=sys.stderr, bar_format="{bar:20} {n_fmt}/{total_fmt} {desc}")

    def update(self, job: Job) -> None:
        if self.bar is None:
            return
        names = [name for name, _ in STEPS]
        status = job.status.value
        stage = job.stage.value if job.stage else ("queued" if status == "queued" else None)
        done = len(STEPS) if status == "succeeded" else names.index(stage) if stage in names else 0
        self.bar.set_description_str("done" if status == "succeeded" else dict(STEPS).get(stage or "", ""))
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
