"""A small client for the narrator service's HTTP API: submit a photo, follow its job, fetch the MP3.

    from narrator_client import Client

    client = Client("http://127.0.0.1:8000", api_key="nk_...")
    job = client.submit("photo.jpg", words=40, seed=7)
    job = client.wait(job.id, timeout=300)  # a narrator_client.Job: the API's own model
    client.download(job.id, "story.mp3")

It needs only `requests` and `pydantic` (and `tqdm` for the command line's progress bar): no torch,
nothing from the service's own packages.
"""

from narrator_client.client import DEFAULT_URL, Client
from narrator_client.errors import (
    ApiError,
    ConnectionFailed,
    JobFailed,
    NarratorError,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    WaitTimeout,
)
from narrator_client.job import Job, JobStatus, Stage

__all__ = [
    "DEFAULT_URL",
    "Client",
    "ApiError",
    "Job",
    "JobStatus",
    "Stage",
    "ConnectionFailed",
    "JobFailed",
    "NarratorError",
    "NotFound",
    "RateLimited",
    "ServiceUnavailable",
    "WaitTimeout",
]
