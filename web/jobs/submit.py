"""Turning an upload into a queued job, shared by the JSON API and the HTML form.

Order matters: every check runs before anything is stored or queued, and a failure after the
image is stored undoes what was done, so clients never see half-created jobs.
"""

from __future__ import annotations

import io
import sys
import threading
import unicodedata

import redis
from flask import current_app, request
from PIL import Image
from pydantic import ValidationError
from werkzeug.exceptions import ClientDisconnected

from shared import result_cache
from shared.images import ImageError, check_image
from shared.jobs import Job, files, new_job_id
from shared.redis_conn import WAIT_REPLICAS, WAIT_TIMEOUT_MS, wait_for_replicas
from shared.webhooks import InvalidWebhook, webhook_for_submit
from web.api.contract import SubmitFields, validation_error
from web.api.languages import job_language
from web.api.styles import job_style
from web.jobs.idempotency import REUSED_MESSAGE, IdempotentSubmit
from web.middleware.auth import client_network
from web.middleware.errors import AppError
from web.middleware.metrics import note_rejection
from web.services import services

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded", "")

# At most this many uploads of one web process are being decoded at any moment: a full decode of
# a MAX_IMAGE_PIXELS image takes up to 4 bytes a pixel (160 MB at 40 MP). Created when the app is
# imported, which gunicorn's gevent worker does after monkey-patching (so this is a gevent
# semaphore there, and a thread semaphore under threads); never preload the app.
DECODE_SLOTS = threading.BoundedSemaphore(1)


def form_fields() -> SubmitFields:
    """This request's `words`, `seed`, `style` and `webhook`, checked by the contract's model: a bad
    one is a 400 with its own code (invalid_words, ...)."""
    fields = {name: request.form.get(name) for name in SubmitFields.model_fields if name in request.form}
    try:
        return SubmitFields.model_validate(fields)
    except ValidationError as exc:
        validation_error(exc)
        raise  # validation_error always raises


def clean_filename(name: str | None) -> str | None:
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return name[:200] or None


def check_request_size() -> None:
    """Decide on Content-Length alone, before a byte of the body is read."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise AppError(
            413, "too_large", f"The upload is larger than the {current_app.config['MAX_UPLOAD_MB']:g} MB limit."
        )


class RequestBody(io.RawIOBase):
    """The request body as the form parser reads it, held to its framing.

    A body that ends before its Content-Length (the client gave up or lied), a broken chunked
    encoding, or a socket error or timeout while reading is the client's fault and ends the
    request with a 400: it must never turn into a 500, and never into a job whose id nobody
    receives. (gunicorn hands the application a short body as an early end of file, and raises
    its own parser errors from inside wsgi.input.read().)
    """

    def __init__(self, stream, length: int | None):
        super().__init__()
        self._stream, self._left = stream, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        if want <= 0:
            return 0
        try:
            data = self._stream.read(want)
        except Exception as exc:  # gunicorn's NoMoreData/InvalidChunkSize/..., OSError, timeouts
            raise ClientDisconnected(f"The request body could not be read: {type(exc).__name__}.") from None
        if not data:
            if self._left:
                raise ClientDisconnected("The request body ended before its Content-Length.")
            return 0
        size = len(data)
        buffer[:size] = data
        if self._left is not None:
            self._left -= size
        return size


def guard_request_body() -> None:
    """Put RequestBody between the form parser and the server's wsgi.input, once per request."""
    environ = request.environ
    if "stream" in request.__dict__ or "form" in request.__dict__:
        return  # already read: nothing left to guard
    if not isinstance(environ.get("wsgi.input"), RequestBody):
        environ["wsgi.input"] = RequestBody(environ["wsgi.input"], request.content_length)


def read_image_field(limit: int) -> tuple[bytes, str | None]:
    guard_request_body()
    if request.mimetype not in FORM_TYPES:
        raise AppError(415, "unsupported_media_type", "Send the photo as multipart/form-data in the field 'image'.")
    upload = request.files.get("image")  # parsing is capped by MAX_CONTENT_LENGTH while it reads
    data = upload.stream.read(limit + 1) if upload is not None else b""  # at most one byte past
    # A browser sends an empty part with no filename when no file was chosen.
    if upload is None or (not data and not upload.filename):
        raise AppError(400, "missing_image", "Choose a photo to upload (form field 'image').")
    if len(data) > limit:
        raise AppError(
            413, "too_large", f"The photo is larger than the {current_app.config['MAX_UPLOAD_MB']:g} MB limit."
        )
    return data, clean_filename(upload.filename)


def _off_the_event_loop(func, *args):
    """Under gunicorn's gevent worker, run CPU-bound decoding in a native thread of gevent's pool:
    Pillow releases the GIL while it decodes, so the event loop goes on serving other requests
    (a 40 MP WebP takes over a second). Elsewhere (threads, tests) call it directly."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        import gevent

        # The error comes back as a value and is raised here: gevent's pool prints a traceback for
        # every exception its threads raise, and a photo that is not one is the client's mistake.
        result, error = gevent.get_hub().threadpool.apply(_caught, (func, args))
        if error is not None:
            raise error
        return result
    return func(*args)


def _caught(func, args):
    try:
        return func(*args), None
    except Exception as exc:
        return None, exc


def validate_image(data: bytes, max_pixels: int) -> str:
    """Raise AppError for anything that is not a usable photo; return its MIME type.

    Bounded memory: shared.images.check_image never keeps a decoded copy (PNG chunks are
    verified, JPEG decoded at 1/8 scale) and DECODE_SLOTS bounds concurrent decodes."""
    try:
        with DECODE_SLOTS:
            fmt = _off_the_event_loop(check_image, data, max_pixels)
    except ImageError as exc:
        raise AppError(exc.http_status, exc.code, exc.message) from None
    except Exception as exc:  # a decoder choking on hostile bytes is still the client's input
        raise AppError(
            415, "not_an_image", f"The file could not be decoded as an image ({type(exc).__name__})."
        ) from None
    return Image.MIME.get(fmt or "", "application/octet-stream")


@note_rejection  # the reason a refused submit gets counted (web/middleware/metrics.py)
def create_job_from_request(idempotency: IdempotentSubmit | None = None, owner: str | None = None) -> Job:
    """Validate, store, record and enqueue a job of `owner` (web/middleware/auth.py; None: ownerless). With
    `idempotency` (the API's Idempotency-Key), a request repeating an earlier one gets that
    request's job back (and `idempotency.replayed`)."""
    svc = services()
    check_request_size()
    check_queued(svc, owner or client_network())
    data, filename = read_image_field(svc.settings.max_upload_bytes)
    return create_job(data, filename, owner, idempotency)


def create_job(
    data: bytes,
    filename: str | None,
    owner: str | None,
    idempotency: IdempotentSubmit | None = None,
    content_type: str | None = None,
) -> Job:
    """One photo's job, with this request's other form fields (`words`, `seed`, ...). The form's
    albums (web/pages/albums.py) call it once per photo, passing the `content_type` they already checked."""
    svc = services()
    settings = svc.settings
    fields = form_fields()
    words, seed = fields.words or settings.story_words, fields.seed
    style = job_style(fields.style)  # the default's name when none is asked for
    language = job_language(fields.language)  # likewise
    content_type = content_type or validate_image(data, settings.max_image_pixels)

    job = Job(
        id=new_job_id(), words=words, seed=seed, style=style, content_type=content_type, filename=filename, owner=owner
    )
    job.language = language
    if owner is None:  # an ownerless job takes its client network's turns, not a turn of its own
        job.lane = client_network()
    if fields.deadline is not None:  # the claim that meets it later fails it instead (shared/jobs/lua/claim.lua)
        job.deadline_at = job.created_at + fields.deadline
    if result_cache.applies(settings, seed):  # what the result cache's key is made of
        job.image_sha256 = result_cache.image_digest(data)
    try:  # POSTed, signed, when the job ends (shared/webhooks/); its host is resolved and checked
        job.webhook = webhook_for_submit(fields.webhook, job.owner, settings)
    except InvalidWebhook as exc:
        raise AppError(400, "invalid_webhook", str(exc)) from None
    if idempotency is not None:  # only a valid request reserves the key
        earlier = idempotency.reserve(
            svc.redis,
            svc.jobs,
            data,
            words,
            seed,
            job.id,
            webhook=job.webhook,
            style=job.style,
            owner=owner,
            language=job.language,
        )
        if earlier is not None:
            if earlier.owner != owner:  # keys are per owner; a reservation from before that was not
                raise AppError(422, "idempotency_key_reused", REUSED_MESSAGE)
            return earlier
    job.input_key = files.input_key(job.id)
    try:
        svc.ensure_storage()
        svc.storage.put(job.input_key, data, content_type)
        # A hit makes the job a succeeded copy of an earlier result; it never goes through the queue.
        cached = result_cache.applies(settings, seed) and result_cache.serve(svc.redis, svc.storage, settings, job)
        record_and_queue(svc, job, queue=not cached)
    except BaseException:
        if idempotency is not None:  # a failed request must not burn the key
            idempotency.release(svc.redis)
        raise
    if idempotency is not None:
        idempotency.confirm(svc.redis, svc.jobs.ttl)
    return job


def record_and_queue(svc, job: Job, queue: bool = True) -> None:
    """Record a new job whose photo is stored, queue it (unless `queue` is false: it ended at
    submit) and, with Sentinel, wait for a replica; undo it all when a step fails. Every new job
    goes through here: a submit's, an album photo's, a retry's."""
    try:
        svc.jobs.create(job)
    except Exception:
        _discard(svc, job, job_created=False)
        raise
    try:
        if queue:
            svc.enqueue(job.id)
    except Exception as exc:
        current_app.logger.warning("enqueue of %s failed: %s", job.id, exc)
        _discard(svc, job, job_created=True)
        raise AppError(503, "queue_unavailable", "The job queue is unavailable; try again shortly.") from None
    ensure_replicated(svc, job)


def ensure_replicated(svc, job: Job) -> None:
    """With Sentinel, a 202 promises a job a failover cannot lose: a replica must have the record
    (and its wake-up) within WAIT_TIMEOUT_MS, or the job is undone and the client gets a 503 to
    retry, like any other Redis failure. Without Sentinel there is no replica to wait for."""
    try:
        acked = wait_for_replicas(svc.redis, svc.settings, svc.jobs.key(job.id), svc.jobs.ttl)
    except redis.RedisError as exc:  # the master went away meanwhile
        current_app.logger.warning("job %s: could not wait for a replica: %s", job.id, exc)
        acked = 0
    if acked is None or acked >= WAIT_REPLICAS:
        return
    current_app.logger.warning(
        "job %s: no replica acknowledged it within %d ms; refused with a 503", job.id, WAIT_TIMEOUT_MS
    )
    _discard(svc, job, job_created=True)
    raise AppError(503, "redis_unavailable", "The job store could not copy the job to a replica; try again shortly.")


def check_queued(svc, owner: str) -> None:
    """MAX_QUEUED_PER_OWNER, before the body is read, for an owner or (ownerless) a client network.
    Concurrent submits may pass it together, so it is a bound of about that many."""
    most = svc.settings.max_queued_per_owner
    if svc.jobs.queued_count(owner) >= most:
        raise AppError(
            429,
            "too_many_queued",
            f"You already have {most} jobs waiting in the queue; submit more once some have started (or cancel some).",
        )


def _discard(svc, job: Job, job_created: bool) -> None:
    """Best effort: the client gets an error and no id, so nothing should remain behind."""
    try:
        if job_created:
            svc.jobs.delete(job.id)
        svc.storage.delete(job.input_key)
        for key in (job.audio_key, getattr(job, "subtitles_key", None)):  # a result cache hit's copies
            if key:
                svc.storage.delete(key)
    except Exception as exc:  # the original error is the one worth reporting
        current_app.logger.warning("cleanup of %s failed: %s", job.id, exc)
