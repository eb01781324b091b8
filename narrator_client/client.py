"""The API client: one requests.Session, JSON in, jobs out as the API's own model (job.py), typed errors (errors.py)."""

from __future__ import annotations

import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests

from narrator_client.errors import ConnectionFailed, JobFailed, RateLimited, ServiceUnavailable, WaitTimeout, error_for
from narrator_client.job import Job

DEFAULT_URL = "http://127.0.0.1:8000"
LONG_POLL = 30.0  # seconds one request of `wait` may be held by the service
MAX_WAIT = 60.0  # the longest the service holds one
Image = str | os.PathLike | bytes | IO[bytes]


class Client:
    """`url` defaults to $NARRATOR_URL, then http://127.0.0.1:8000; `api_key` to $NARRATOR_API_KEY.
    `timeout` bounds each HTTP request (seconds), not a whole wait."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = (url or os.environ.get("NARRATOR_URL") or DEFAULT_URL).rstrip("/") + "/"
        self.api_key = api_key if api_key is not None else os.environ.get("NARRATOR_API_KEY") or None
        self.timeout = timeout
        self.sleep = sleep  # waits go through it (tests watch them)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "narrator-client/1"

    # --- the API ---------------------------------------------------------------------------------------
    def submit(
        self,
        image: Image,
        words: int | None = None,
        seed: int | None = None,
        style: str | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
        wait: float | None = None,
        language: str | None = None,
    ) -> Job:
        """Upload a photo (a path, its bytes or a binary file); returns the new job (status queued,
        or succeeded at once when the service had the result cached). With `wait` (seconds, at most
        60) the service answers once the job is final or that time passed (`Prefer: wait`).
        `language`: an ISO 639-3 code the service offers (GET /api/v1/languages; None: its default)."""
        name, data = _read_image(image, filename)
        pairs = (("words", words), ("seed", seed), ("style", style), ("language", language), ("webhook", webhook))
        fields = {k: str(v) for k, v in pairs if v is not None}
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if wait:
            headers["Prefer"] = f"wait={wait:g}"
        return self._job(
            "POST",
            "api/v1/jobs",
            data=fields,
            files={"image": (name, data, content_type)},
            headers=headers,
            read_timeout=wait or 0.0,
        )

    def get(self, job_id: str, wait: float | None = None) -> Job:
        """The job. With `wait` (seconds, 0.1 to 60) a long poll: the service answers when the job's
        status or stage changes, or once that time passed."""
        if not wait:
            return self._job("GET", f"api/v1/jobs/{job_id}")
        job, _ = self._poll(job_id, wait, None)
        assert job is not None  # without an ETag to compare with, the service always sends the job
        return job

    def _poll(self, job_id: str, wait: float, etag: str | None) -> tuple[Job | None, str | None]:
        """A long poll for anything newer than `etag` (the job as last seen): (the job, its ETag), or
        (None, etag) when it stayed as it was all through the wait."""
        wait = min(max(wait, 0.1), MAX_WAIT)
        headers = {"If-None-Match": etag} if etag else {}
        response = self._request(
            "GET", f"api/v1/jobs/{job_id}", headers=headers, params={"wait": f"{wait:.1f}"}, read_timeout=wait
        )
        if response.status_code == 304:
            return None, etag
        return Job.model_validate(response.json()), response.headers.get("ETag")

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; an ApiError with code already_finished if it had ended."""
        return self._job("POST", f"api/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> Job:
        """Run a failed or canceled job again: the new job (its `retry_of` is `job_id`); an ApiError
        with code not_retryable for any other job."""
        return self._job("POST", f"api/v1/jobs/{job_id}/retry")

    def delete(self, job_id: str) -> None:
        """Erase the job: its photo, audio, subtitles and record (a running one is canceled first).
        NotFound if there is no such job (any more)."""
        self._request("DELETE", f"api/v1/jobs/{job_id}")

    def jobs(self, page_size: int = 100) -> Iterator[Job]:
        """Every job of this API key, newest first, following the pages as it goes."""
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self._json("GET", "api/v1/jobs", params=params)
            yield from (Job.model_validate(job) for job in page["jobs"])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def wait(self, job_id: str, timeout: float | None = None, on_update: Callable[[Job], None] | None = None) -> Job:
        """Follow the job until it finishes and return it; JobFailed if it failed or was canceled,
        WaitTimeout after `timeout` seconds. Each request is a long poll (`?wait=`, up to 30 s) that
        the service answers as soon as the job changes. A 429 or 503 waits at least as long as its
        Retry-After says, and a service that answers at once without waiting (one from before long
        polls) is polled with a backoff from 0.25 s to 5 s instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Job | None = None
        delay, seen, etag = 0.25, None, None
        while True:
            remaining = LONG_POLL if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(job_id, job, timeout or 0.0)
            wait = max(0.1, min(remaining, LONG_POLL))  # as get() sends it
            started = time.monotonic()
            try:
                polled, etag = self._poll(job_id, wait, etag)  # answered as soon as the job differs from etag's
                job = polled or job
            except (RateLimited, ServiceUnavailable, ConnectionFailed) as exc:
                pause = max(delay, getattr(exc, "retry_after", None) or 0.0)
            else:
                assert job is not None  # the first poll has no ETag, so it gets the job
                state = job.status, job.stage
                if on_update is not None and state != seen:
                    on_update(job)
                if job.status == "succeeded":
                    return job
                if job.finished:
                    raise JobFailed(job)
                # Nothing changed, yet the answer came long before the wait was over: this service
                # does not wait, so pace the polls. (A first answer has nothing to compare with.)
                answered_at_once = time.monotonic() - started < wait / 2
                pause = delay if answered_at_once and seen is not None and state == seen else 0.0
                seen = state
            if pause:
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise WaitTimeout(job_id, job, timeout or 0.0)
                self.sleep(pause)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.25

    def download(self, job_id: str, path: str | os.PathLike, tries: int = 4) -> Path:
        """Write the job's MP3 to `path` (whole or not at all). The audio URL may redirect to
        presigned storage on another host: the API key is sent to the service only, never there.
        A 429 or 503 is retried after its Retry-After."""
        for attempt in range(1, tries + 1):
            try:
                return self._download(job_id, Path(path))
            except (RateLimited, ServiceUnavailable) as exc:
                if attempt == tries:
                    raise
                self.sleep(exc.retry_after or attempt)
        raise AssertionError("unreachable")

    def _download(self, job_id: str, path: Path) -> Path:
        response = self._request("GET", f"api/v1/jobs/{job_id}/audio", allow_redirects=False, stream=True)
        if response.is_redirect:
            target = urljoin(response.url, response.headers["Location"])
            response.close()
            if _origin(target) == _origin(self.url):
                response = self._request("GET", target, stream=True)
            else:
                response = self._send(requests.get, target, stream=True)
        partial = path.with_name(f".{path.name}.part")
        try:
            with response, open(partial, "wb") as out:
                for chunk in response.iter_content(64 * 1024):
                    out.write(chunk)
            partial.replace(path)
        except requests.RequestException as exc:
            raise ConnectionFailed(f"the download of job {job_id}'s audio broke off: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        return path

    # --- HTTP --------------------------------------------------------------------------------------------
    def _json(self, method: str, path: str, **kwargs) -> dict[str, Any]:
        return self._request(method, path, **kwargs).json()

    def _job(self, method: str, path: str, **kwargs) -> Job:
        return Job.model_validate(self._json(method, path, **kwargs))

    def _request(
        self, method: str, path: str, headers: dict | None = None, read_timeout: float = 0.0, **kwargs
    ) -> requests.Response:
        """`read_timeout`: seconds the service may hold this request on top of `timeout` (a long poll)."""
        headers = dict(headers or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if read_timeout:
            kwargs["timeout"] = (self.timeout, self.timeout + read_timeout)
        return self._send(self.session.request, urljoin(self.url, path), method=method, headers=headers, **kwargs)

    def _send(self, call, url: str, method: str | None = None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            args = (method, url) if method else (url,)
            response = call(*args, **kwargs)
        except requests.RequestException as exc:
            raise ConnectionFailed(f"no answer from {url}: {exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise error_for(response.status_code, body, _retry_after(response.headers.get("Retry-After")))
        return response


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _read_image(image: Image, filename: str | None) -> tuple[str, bytes]:
    if isinstance(image, (bytes, bytearray)):
        return filename or "photo.jpg", bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return filename or path.name, path.read_bytes()  # OSError (missing, unreadable) is the caller's
    return filename or Path(getattr(image, "name", "photo.jpg")).name, image.read()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare here; the poll's own backoff applies
        return None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc
