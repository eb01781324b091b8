"""The job lifecycle on the worker side, as plain functions testable without a broker.

queued -> running (stage caption, story, speech, upload) -> succeeded | failed | canceled.

A wake-up message names a job. The worker claims queued jobs for one run (that job first, then the
oldest, up to WORKER_BATCH_SIZE or the engine's default for its device), each with a short lease its
heartbeat renews (worker/heartbeat.py), runs them as one batch and publishes each job's caption and
story as soon as they exist. Every write names the run (its claimant), so a run that lost its jobs
(canceled, or reaped after its worker stopped beating) changes nothing, and each run writes its MP3
under its own key, so a late run can never overwrite a newer result.

A run has two parts. The GPU part (run_stages: read the photos in parallel, caption, story,
speech) runs in the task, within JOB_TIME_LIMIT. The finishing part (finish_batch: encode the
MP3s, upload, record each job, webhooks) needs no GPU: the Celery task hands it to the worker's
finisher (worker/finisher.py) so that the next batch's GPU part overlaps it; called without one,
run_wakeup finishes inline and answers every job's final status.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from shared import result_cache
from shared.images import ImageError, load_image
from shared.jobs import Job, JobStatus, JobStore, Stage
from shared.storage import Storage, StorageError, StorageNotFound, StorageUnavailable
from worker import metrics
from worker.limits import time_limit

log = logging.getLogger(__name__)
TIME_LIMIT_MESSAGE = "the job took longer than its time limit (JOB_TIME_LIMIT)"
STORAGE_DOWN_MESSAGE = "storage stayed unreachable; please try again later"


class JobCanceled(Exception):
    """Raised at a stage boundary when no job of the batch is still held by this run."""


class JobFailed(Exception):
    """A failure the user can act on; its message becomes the job's `error`."""


def audio_key(job_id: str, claimant: str) -> str:
    return f"audio/{job_id}/{claimant.rsplit(':', 1)[-1]}.mp3"


def subtitles_key(job_id: str, claimant: str) -> str:
    # Its own prefix: audio/<id>/ holds exactly one MP3 per run, which the fault tests count.
    return f"subtitles/{job_id}/{claimant.rsplit(':', 1)[-1]}.vtt"


FINAL = ("succeeded", "failed", "canceled")  # outcomes that end a job (its webhook fires)
IMAGE_READERS = 8  # parallel storage reads per batch: each GET is a round trip


@dataclass
class Narrated:
    """A batch past its GPU stages: the jobs this run still holds and their narrations (MP3s to encode)."""

    claimant: str
    jobs: list[Job]
    narrations: list


def run_wakeup(
    job_id: str | None,
    *,
    store: JobStore,
    storage: Storage,
    engine,
    heartbeat,
    settings,
    finisher=None,
    notify: Callable[[list[str]], object] | None = None,
) -> dict[str, str]:
    """Claim a batch (`job_id` first when it is still queued) and run it; {job id: status}.

    The GPU stages run here; finishing (encode, upload, record) runs inline, or on `finisher`
    (worker/finisher.py) so the next batch can use the GPU meanwhile: then the jobs still finishing
    show "finishing" in the answer. Every job that ends is counted (metrics) and passed to `notify`
    (its webhook) once, when it ends. The heartbeat holds the batch's leases until it is finished."""
    if heartbeat.stopping:
        return {}  # a stopping worker takes no new jobs
    claimant = heartbeat.new_claimant()
    # WORKER_BATCH_SIZE, or unset, the engine's default for its device (128 on a GPU, 8 on a CPU).
    batch = store.claim(claimant, settings.worker_batch_size or engine.batch_size, settings.lease_seconds, first=job_id)
    if not batch:
        return {}  # already run, running elsewhere or canceled: the message was only a wake-up
    metrics.batch_claimed(len(batch))
    if len(batch) > 1:
        log.info("running a batch of %d jobs: %s", len(batch), ", ".join(batch))
    heartbeat.hold(claimant, batch)
    narrated = None
    try:
        if finisher is not None and len(batch) == 1 and is_rerun(store, batch[0]):
            # A job whose earlier run died runs alone (store.claim) and, should it be a photo that kills
            # workers, with no other batch finishing beside it either: that batch did nothing wrong.
            finisher.wait()
        outcomes, narrated = narrate_claimed(
            batch, claimant, store=store, storage=storage, engine=engine, settings=settings
        )
    finally:
        if narrated is None:
            heartbeat.release(claimant)
    ended(outcomes, store, notify)
    if narrated is None:
        return outcomes
    heartbeat.hold(claimant, [job.id for job in narrated.jobs])  # only those still to finish

    def finish() -> dict[str, str]:
        try:
            done = finish_batch(narrated, store=store, storage=storage, engine=engine, settings=settings)
        finally:
            heartbeat.release(claimant)
        ended(done, store, notify)
        if finisher is not None:  # the task's own log line showed only "finishing"
            log.info("finished %s", done)
        return done

    if finisher is None:
        return {**outcomes, **finish()}
    finisher.submit(finish)  # waits while the previous batch is still finishing
    return {**outcomes, **dict.fromkeys((job.id for job in narrated.jobs), "finishing")}


def is_rerun(store: JobStore, job_id: str) -> bool:
    job = store.get(job_id)
    return job is not None and job.attempts > 1


def ended(outcomes: dict[str, str], store: JobStore, notify: Callable[[list[str]], object] | None) -> None:
    """Each job's outcome, counted once, and the webhooks of those that ended."""
    metrics.jobs_finished(outcomes, store)
    done = [job_id for job_id, status in outcomes.items() if status in FINAL]
    if notify is not None and done:
        notify(done)


def narrate_claimed(
    job_ids: list[str], claimant: str, *, store: JobStore, storage: Storage, engine, settings
) -> tuple[dict[str, str], Narrated | None]:
    """The GPU part of a claimed batch, within JOB_TIME_LIMIT: read the photos, run the stages.
    Returns the outcomes of the jobs that ended here, and what is left to finish (None: nothing)."""
    try:
        with time_limit(settings.job_time_limit):
            return run_stages(job_ids, claimant, store=store, storage=storage, engine=engine, settings=settings)
    except SoftTimeLimitExceeded:  # fired outside the stages
        return {job_id: fail_job(store, job_id, TIME_LIMIT_MESSAGE, claimant) for job_id in job_ids}, None
    except RedisError as exc:
        # Nothing can be recorded now; the leases lapse and the reaper puts the jobs back.
        log.warning(
            "lost Redis while running %s (%s); they are requeued when their leases lapse", ", ".join(job_ids), exc
        )
        return dict.fromkeys(job_ids, "abandoned"), None


def run_stages(
    job_ids: list[str], claimant: str, *, store: JobStore, storage: Storage, engine, settings
) -> tuple[dict[str, str], Narrated | None]:
    """Read the claimed jobs' photos and run them through the GPU stages as one batch."""
    outcomes: dict[str, str] = {}
    found = []
    for job_id in job_ids:
        job = store.get(job_id)
        if job is None:  # expired between claim and now
            outcomes[job_id] = "missing"
        else:
            found.append(job)
    jobs, images = [], []
    for job, image in zip(found, read_images(found, storage, engine, settings), strict=True):
        if isinstance(image, JobFailed):
            outcomes[job.id] = fail_job(store, job.id, str(image), claimant)
        else:
            jobs.append(job)
            images.append(image)
    if settings.test_fault_hooks:
        run_fault_hooks(jobs)
    active = {job.id for job in jobs}
    stage_now = Stage.CAPTION

    def publish(stage: str, fields: list[dict]) -> None:
        # Each stage boundary shows what exists so far (caption, story) and notices lost jobs.
        nonlocal stage_now
        stage_now = Stage(stage)
        for job, changes in zip(jobs, fields, strict=True):
            if job.id in active and not store.progress(job.id, stage_now, claimant=claimant, **changes):
                active.discard(job.id)  # canceled, or taken back after this worker's lease lapsed
                outcomes[job.id] = "lost"
        if not active:
            raise JobCanceled()

    try:
        if jobs:
            styles = [getattr(j, "style", None) for j in jobs]
            # One batch mixes styles (each row its own adapter); named only when a job has one.
            extra = {"styles": styles} if any(styles) else {}
            narrations = engine.narrate_batch(
                images,
                words=[j.words for j in jobs],
                seeds=[j.seed for j in jobs],
                on_progress=publish,
                encode=False,  # finish_batch encodes, off the GPU's path
                **extra,
            )
            kept = [(job, n) for job, n in zip(jobs, narrations, strict=True) if job.id in active]
            return outcomes, Narrated(claimant, [job for job, _ in kept], [n for _, n in kept])
    except JobCanceled:
        pass
    except RedisError:
        raise
    except SoftTimeLimitExceeded:
        fail_rest(store, active, TIME_LIMIT_MESSAGE, claimant, outcomes)
    except Exception as exc:  # a model error ends these jobs, not the worker
        log.exception("jobs %s failed in stage %s", ", ".join(active), stage_now.value)
        fail_rest(store, active, failure_message(exc, stage_now), claimant, outcomes)
    return outcomes, None


def finish_batch(narrated: Narrated, *, store: JobStore, storage: Storage, engine, settings) -> dict[str, str]:
    """Encode the batch's MP3s, then upload and record each job: succeeded, failed or lost. Runs off
    the GPU's path (worker/finisher.py), outside JOB_TIME_LIMIT: storage retries have their own deadline."""
    outcomes: dict[str, str] = {}
    jobs, claimant = narrated.jobs, narrated.claimant
    retry = storage_retry(settings.storage_retry_seconds)
    stage_now = Stage.SPEECH  # encoding is the tail of the speech stage
    try:
        if settings.test_fault_hooks:
            run_finish_fault_hooks(jobs)
        engine.encode(narrated.narrations)
        metrics.stages_done(narrated.narrations)
        stage_now = Stage.UPLOAD
        for job in jobs:
            if not store.progress(job.id, stage_now, claimant=claimant):
                outcomes[job.id] = "lost"  # canceled while its batch was on the GPU or encoding
        for job, narration in zip(jobs, narrated.narrations, strict=True):
            if job.id not in outcomes:
                with metrics.stage_timer("upload"):
                    outcomes[job.id] = finish_job(store, storage, job.id, narration, claimant, retry)
                if outcomes[job.id] == JobStatus.SUCCEEDED.value:
                    remember_result(store, settings, job)
    except RedisError as exc:
        log.warning("lost Redis while finishing %s (%s); they are requeued when their leases lapse", claimant, exc)
        outcomes.update((job.id, "abandoned") for job in jobs if job.id not in outcomes)
    except Exception as exc:  # an encode or storage error ends the unfinished jobs, not the worker
        log.exception("jobs of %s failed in stage %s", claimant, stage_now.value)
        fail_rest(store, [job.id for job in jobs], failure_message(exc, stage_now), claimant, outcomes)
    return outcomes


def failure_message(exc: Exception, stage: Stage) -> str:
    if isinstance(exc, StorageUnavailable):
        return STORAGE_DOWN_MESSAGE
    return f"the {stage.value} stage failed ({type(exc).__name__}: {exc})"


def fail_rest(store: JobStore, job_ids, message: str, claimant: str, outcomes: dict[str, str]) -> None:
    """Fail each of `job_ids` that has no outcome yet (Redis gone meanwhile: abandoned, the reaper requeues)."""
    for job_id in job_ids:
        if job_id not in outcomes:
            try:
                outcomes[job_id] = fail_job(store, job_id, message, claimant)
            except RedisError:
                outcomes[job_id] = "abandoned"


def finish_job(store: JobStore, storage: Storage, job_id: str, narration, claimant: str, retry: Callable) -> str:
    from worker.engine.subtitles import to_vtt

    key, vtt_key = audio_key(job_id, claimant), subtitles_key(job_id, claimant)
    retry(lambda: storage.put(key, narration.mp3, content_type="audio/mpeg"))
    vtt = to_vtt(getattr(narration, "words", None) or []).encode()
    retry(lambda: storage.put(vtt_key, vtt, content_type="text/vtt; charset=utf-8"))
    timings = {name: round(seconds, 4) for name, seconds in narration.timings.items()}
    if store.succeed(
        job_id,
        key,
        round(narration.audio_seconds, 3),
        claimant=claimant,
        caption=narration.caption,
        story=narration.story,
        timings=timings,
        subtitles_key=vtt_key,
    ):
        _remove_other_runs_audio(storage, job_id, key, vtt_key)
        return JobStatus.SUCCEEDED.value
    # Canceled meanwhile, or another run holds the job now: this run's audio belongs to no one.
    retry(lambda: storage.delete(key))
    retry(lambda: storage.delete(vtt_key))
    return "lost"


def remember_result(store: JobStore, settings, job: Job) -> None:
    """A succeeded job with a seed answers later submits of the same photo, words, seed and style
    (shared/result_cache.py). Best effort: the job has succeeded whatever happens here."""
    if not getattr(settings, "result_cache", False) or result_cache.job_key(settings, job) is None:
        return
    try:
        done = store.get(job.id)  # what finish_job recorded: the audio's key, the timings
        key = result_cache.job_key(settings, done) if done is not None else None
        if done is not None and key and done.status == JobStatus.SUCCEEDED:
            result_cache.remember(store.redis, store.ttl, key, done)
    except Exception as exc:
        log.warning("could not cache the result of job %s: %s", job.id, exc)


def _remove_other_runs_audio(storage: Storage, job_id: str, *keep: str) -> None:
    # A run whose worker died after uploading left its MP3 (and subtitles) behind; the job has one result.
    try:
        for prefix in (f"audio/{job_id}/", f"subtitles/{job_id}/"):
            for key in storage.list(prefix):
                if key not in keep:
                    storage.delete(key)
    except StorageError as exc:
        log.warning("could not tidy the audio of job %s: %s", job_id, exc)


def storage_retry(seconds: float) -> Callable:
    """Run a storage call, retrying StorageUnavailable with backoff for up to `seconds` in all (the
    heartbeat keeps the jobs' leases alive meanwhile); then the last error is raised."""
    deadline = time.monotonic() + seconds

    def call(action):
        delay = 0.5
        while True:
            try:
                return action()
            except StorageUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("storage unavailable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    return call


def check_style(engine, job: Job) -> None:
    """A job whose style this worker does not serve fails alone, not its whole batch (web and
    workers read the same STORY_STYLES; they differ only mid-rollout or by mistake)."""
    problem = getattr(engine, "style_problem", None)
    message = problem(getattr(job, "style", None)) if problem else None
    if message:
        raise JobFailed(message)


def read_images(jobs: list[Job], storage: Storage, engine, settings) -> list:
    """Each job's photo, decoded, or the JobFailed that ends the job; read in parallel."""
    retry = storage_retry(settings.storage_retry_seconds)

    def read(job: Job):
        try:
            check_style(engine, job)
            return read_image(storage, job.input_key or f"inputs/{job.id}", settings.max_image_pixels, retry)
        except JobFailed as exc:
            return exc

    if len(jobs) <= 1:
        return [read(job) for job in jobs]
    pool = ThreadPoolExecutor(max_workers=min(len(jobs), IMAGE_READERS), thread_name_prefix="read-image")
    try:
        return list(pool.map(read, jobs))
    finally:  # the time limit may cut the batch short: drop the reads not yet started
        pool.shutdown(wait=False, cancel_futures=True)


def read_image(storage: Storage, key: str, max_pixels: int | None, retry: Callable):
    try:
        data = retry(lambda: storage.get(key))
    except StorageNotFound:
        raise JobFailed("the uploaded image is no longer in storage; please upload it again") from None
    except StorageUnavailable:
        raise JobFailed(STORAGE_DOWN_MESSAGE) from None
    except StorageError as exc:  # e.g. access denied: retrying will not help
        raise JobFailed(f"storage refused the uploaded image ({exc})") from None
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise JobFailed(exc.message) from None


def fail_job(store: JobStore, job_id: str, message: str, claimant: str) -> str:
    return JobStatus.FAILED.value if store.fail(job_id, message, claimant=claimant) else "lost"


def run_fault_hooks(jobs: list[Job]) -> None:
    """TEST_FAULT_HOOKS only: a photo uploaded as `__kill_worker__...` kills its worker (a poison
    job), one named `__sleep_<seconds>__...` makes its batch's GPU part take that much longer."""
    for job in jobs:
        if (job.filename or "").startswith("__kill_worker__"):
            log.warning("fault hook: killing this worker for job %s", job.id)
            os.kill(os.getpid(), signal.SIGKILL)
        sleep_as_named(job, "sleep")


def run_finish_fault_hooks(jobs: list[Job]) -> None:
    """TEST_FAULT_HOOKS only: a photo named `__slow_finish_<seconds>__...` makes its batch's
    finishing (encode, upload) take that much longer."""
    for job in jobs:
        sleep_as_named(job, "slow_finish")


def sleep_as_named(job: Job, hook: str) -> None:
    """Sleep the seconds a photo named `__<hook>_<seconds>__...` asks for."""
    match = re.match(rf"__{hook}_(\d+(?:\.\d+)?)__", job.filename or "")
    if match:
        time.sleep(float(match.group(1)))
