"""The job lifecycle on the worker side, as plain functions testable without a broker.

queued -> running (stage caption, story, speech, upload) -> succeeded | failed | canceled.

A wake-up message names a job. The worker claims queued jobs for one run (that job first, then the
oldest, up to WORKER_BATCH_SIZE or the engine's default for its device), each with a short lease its
heartbeat renews (worker/heartbeat.py), runs them as one batch and publishes each job's caption and
story as soon as they exist, one store write per stage for the whole batch (shared/jobs/lua/).
Every write names the run (its claimant), so a run that lost its jobs (canceled, or reaped after
its worker stopped beating) changes nothing, and each run writes its MP3 under its own key, so a
late run can never overwrite a newer result. The run keeps the records it claimed and finished
(`Run`): nothing reads a job again once it has ended.

A run has two parts. The GPU part (run_stages: read the photos in parallel, caption, story,
speech) runs in the task, within JOB_TIME_LIMIT; a job whose photo storage cannot serve now goes
back to the queue (not an attempt) rather than hold a worker through the outage. The finishing part
(finish_batch: encode the MP3s, upload them in parallel, record the batch in one write, webhooks)
needs no GPU: the Celery task hands it to the worker's finisher (worker/finisher.py) so that the
next batch's GPU part overlaps it (on a CPU it encodes first: ENCODE_IN_BACKGROUND); called without
one, run_wakeup finishes inline and answers every job's final status.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from shared import result_cache
from shared.images import ImageError, load_image
from shared.jobs import Job, JobStatus, JobStore, Stage, files
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


T = TypeVar("T")
R = TypeVar("R")
FINAL = ("succeeded", "failed", "canceled")  # outcomes that end a job (its webhook fires)
STORAGE_THREADS = 8  # parallel storage calls per batch (photo reads, uploads): each is a round trip
# Reading a batch's photos retries an outage this long at most, then hands the jobs back: a queued job
# costs nothing, while a held one keeps a worker from jobs it could run (uploads keep
# STORAGE_RETRY_SECONDS: their results exist only in memory).
READ_RETRY_SECONDS = 5.0
# After handing jobs back, a worker waits this long at most for storage to answer before it claims
# again, so that an outage does not become a loop of claims handed straight back.
STORAGE_WAIT_SECONDS = 10.0


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
    encode_in_background: bool = True,
) -> dict[str, str]:
    """Claim a batch (`job_id` first when it is still queued) and run it; {job id: status}.

    The GPU stages run here; finishing (encode, upload, record) runs inline, or on `finisher`
    (worker/finisher.py) so the next batch can use the GPU meanwhile (the MP3s are encoded first,
    here, unless `encode_in_background`): then the jobs still finishing show "finishing" in the
    answer. Every job that ends is counted (metrics) once; its webhook goes out from the store's own
    ending transition (JobStore.notify). The heartbeat holds the batch's leases until it is finished.
    Jobs whose photos storage could not serve are handed back ("queued"); then this waits, holding
    no job, until storage answers or STORAGE_WAIT_SECONDS pass."""
    if not heartbeat.may_take_jobs():
        return {}  # a stopping worker takes no new jobs
    claimant = heartbeat.new_claimant()
    # WORKER_BATCH_SIZE, or unset, the engine's default for its device (128 on a GPU, 8 on a CPU).
    limit = settings.worker_batch_size or engine.batch_size
    batch = store.claim_jobs(claimant, limit, settings.lease_seconds, first=job_id)
    if not batch:
        return {}  # already run, running elsewhere or canceled: the message was only a wake-up
    metrics.batch_claimed(len(batch))
    if len(batch) > 1:
        log.info("running a batch of %d jobs: %s", len(batch), ", ".join(job.id for job in batch))
    heartbeat.hold(claimant, [job.id for job in batch])
    run = Run(claimant)
    narrated = None
    try:
        if finisher is not None and len(batch) == 1 and batch[0].attempts > 1:
            # A job whose earlier run died runs alone (store.claim) and, should it be a photo that kills
            # workers, with no other batch finishing beside it either: that batch did nothing wrong.
            finisher.wait()
        narrated = narrate_claimed(
            batch, run, store=store, storage=storage, engine=engine, heartbeat=heartbeat, settings=settings
        )
    finally:
        if narrated is None:
            heartbeat.release(claimant)
    outcomes = run.report()
    if narrated is not None:
        outcomes.update(
            hand_over(
                narrated,
                store=store,
                storage=storage,
                engine=engine,
                heartbeat=heartbeat,
                settings=settings,
                finisher=finisher,
                encode_in_background=encode_in_background,
            )
        )
    if run.handed_back:
        # A deployment that does not retry storage (STORAGE_RETRY_SECONDS=0) does not wait for it either.
        wait = min(settings.storage_retry_seconds, STORAGE_WAIT_SECONDS)
        wait_for_storage(storage, run.handed_back[0], wait, heartbeat)
        # The claim dropped their waiting wake-ups (shared/jobs/lua/claim.lua): each gets one again,
        # once storage answers (or the wait ends); failing that, the reaper's lost wake-up check.
        try:
            heartbeat.wake([job.id for job in run.handed_back])
        except Exception as exc:
            log.warning("could not wake the jobs handed back (%s); the reaper will", exc)
    return outcomes


def hand_over(
    narrated: Narrated,
    *,
    store: JobStore,
    storage: Storage,
    engine,
    heartbeat,
    settings,
    finisher,
    encode_in_background,
) -> dict[str, str]:
    """Finish a batch past its GPU part: inline (its jobs' final statuses), or on `finisher`
    ("finishing")."""
    claimant = narrated.claimant
    heartbeat.hold(claimant, [job.id for job in narrated.jobs])  # only those still to finish

    def finish() -> dict[str, str]:
        done = Run(claimant)
        try:
            finish_batch(narrated, done, store=store, storage=storage, engine=engine, settings=settings)
        finally:
            heartbeat.release(claimant)
        finished = done.report()
        if finisher is not None:  # the task's own log line showed only "finishing"
            log.info("finished %s", finished)
        return finished

    if finisher is None:
        return finish()
    if not encode_in_background:  # a CPU: encoding beside the next batch would only slow it down
        try:
            engine.encode(narrated.narrations)
        except Exception as exc:  # finish_batch meets it again and fails the jobs, naming the stage
            log.warning("encoding the MP3s of %s failed: %s", claimant, exc)
    finisher.submit(finish)  # waits while the previous batch is still finishing
    return dict.fromkeys((job.id for job in narrated.jobs), "finishing")


class Run:
    """What one run (a claimant) has ended so far: each job's outcome, and the records of the jobs
    that ended as written, which metrics and the result cache take without a re-read (the store
    handed them to the webhooks as it wrote them), and the jobs it handed back to the queue."""

    def __init__(self, claimant: str):
        self.claimant = claimant
        self.outcomes: dict[str, str] = {}
        self.ended: list[Job] = []
        self.handed_back: list[Job] = []

    def pending(self, jobs: list[Job]) -> list[Job]:
        back = {job.id for job in self.handed_back}
        return [job for job in jobs if job.id not in self.outcomes and job.id not in back]

    def hand_back(self, store: JobStore, jobs: list[Job]) -> None:
        """Put jobs back in the queue at their old place, not counted as an attempt (store.release);
        one canceled meanwhile is "lost"."""
        for job in jobs:
            if store.release(job.id, self.claimant):
                self.handed_back.append(job)
            else:
                self.outcomes[job.id] = "lost"

    def finish(self, store: JobStore, results: list[tuple[Job, JobStatus, dict]]) -> None:
        """End jobs in one write; those this run no longer holds are "lost" (canceled, or taken
        back), and with Redis gone they are "abandoned" (their leases lapse, the reaper requeues)."""
        results = [r for r in results if r[0].id not in self.outcomes]
        try:
            ended = store.finish_batch(self.claimant, results)
        except RedisError:
            self.outcomes.update((job.id, "abandoned") for job, _, _ in results)
            return
        self.ended += ended
        self.outcomes.update((job.id, job.status.value) for job in ended)
        self.outcomes.update((job.id, "lost") for job, _, _ in results if job.id not in self.outcomes)

    def fail(self, store: JobStore, jobs: list[Job], message: str) -> None:
        self.finish(store, [(job, JobStatus.FAILED, {"error": message}) for job in jobs])

    def report(self) -> dict[str, str]:
        """Each job's outcome, counted once; those handed back are "queued" (not counted: they did
        not end)."""
        metrics.jobs_finished(self.outcomes, self.ended)
        return {**self.outcomes, **dict.fromkeys((job.id for job in self.handed_back), "queued")}


def narrate_claimed(
    jobs: list[Job], run: Run, *, store: JobStore, storage: Storage, engine, heartbeat, settings
) -> Narrated | None:
    """The GPU part of a claimed batch, within JOB_TIME_LIMIT: read the photos, run the stages.
    Returns what is left to finish (None: nothing); the jobs that ended or went back to the queue
    here are in `run`."""
    try:
        with time_limit(settings.job_time_limit):
            return run_stages(
                jobs, run, store=store, storage=storage, engine=engine, heartbeat=heartbeat, settings=settings
            )
    except SoftTimeLimitExceeded:  # fired outside the stages
        run.fail(store, run.pending(jobs), TIME_LIMIT_MESSAGE)
    except RedisError as exc:
        # Nothing can be recorded now; the leases lapse and the reaper puts the jobs back.
        log.warning(
            "lost Redis while running %s (%s); they are requeued when their leases lapse",
            ", ".join(job.id for job in jobs),
            exc,
        )
        run.outcomes.update((job.id, "abandoned") for job in run.pending(jobs))
    return None


def run_stages(
    jobs: list[Job], run: Run, *, store: JobStore, storage: Storage, engine, heartbeat, settings
) -> Narrated | None:
    """Read the claimed jobs' photos and run them through the GPU stages as one batch; the jobs
    whose photos storage could not serve go back to the queue first."""
    read = list(zip(jobs, read_images(jobs, storage, engine, settings), strict=True))
    run.finish(
        store, [(job, JobStatus.FAILED, {"error": str(image)}) for job, image in read if isinstance(image, JobFailed)]
    )
    hand_back_unreachable(run, store, [(job, image) for job, image in read if isinstance(image, StorageUnavailable)])
    read = [(job, image) for job, image in read if not isinstance(image, (JobFailed, StorageUnavailable))]
    jobs, images = [job for job, _ in read], [image for _, image in read]
    heartbeat.hold(run.claimant, [job.id for job in jobs])  # the others are no longer this run's to renew
    active = {job.id for job in jobs}
    stage_now = Stage.CAPTION

    def publish(stage: str, fields: list[dict]) -> None:
        # Each stage boundary shows what exists so far (caption, story) and notices lost jobs, in
        # one write for the batch. The claim already put the jobs at the caption stage.
        nonlocal stage_now
        stage_now = Stage(stage)
        if stage_now == Stage.CAPTION:
            return
        changes = [(job.id, f) for job, f in zip(jobs, fields, strict=True) if job.id in active]
        for job_id in store.progress_batch(run.claimant, stage_now, changes):
            active.discard(job_id)  # canceled, or taken back after this worker's lease lapsed
            run.outcomes[job_id] = "lost"
        if not active:
            raise JobCanceled()

    try:
        if jobs:
            styles = [getattr(j, "style", None) for j in jobs]
            # One batch mixes styles (each row its own adapter); named only when a job has one.
            extra = {"styles": styles} if any(styles) else {}
            languages = [getattr(j, "language", None) for j in jobs]
            if any(languages):  # speech runs per language; caption and story batch across them
                extra["languages"] = languages
            narrations = engine.narrate_batch(
                images,
                words=[j.words for j in jobs],
                seeds=[j.seed for j in jobs],
                on_progress=publish,
                encode=False,  # finish_batch encodes, off the GPU's path
                **extra,
            )
            kept = [(job, n) for job, n in zip(jobs, narrations, strict=True) if job.id in active]
            return Narrated(run.claimant, [job for job, _ in kept], [n for _, n in kept])
    except JobCanceled:
        pass
    except RedisError:
        raise
    except SoftTimeLimitExceeded:
        run.fail(store, [job for job in jobs if job.id in active], TIME_LIMIT_MESSAGE)
    except Exception as exc:  # a model error ends these jobs, not the worker
        log.exception("jobs %s failed in stage %s", ", ".join(active), stage_now.value)
        run.fail(store, [job for job in jobs if job.id in active], failure_message(exc, stage_now))
    return None


def hand_back_unreachable(run: Run, store: JobStore, unreachable: list[tuple[Job, StorageUnavailable]]) -> None:
    """Jobs whose photos storage could not serve go back to the queue: queued is what they are."""
    if not unreachable:
        return
    run.hand_back(store, [job for job, _ in unreachable])
    if run.handed_back:
        log.warning(
            "storage unreachable (%s): handed %d job(s) back to the queue, not counted as an attempt: %s",
            unreachable[0][1],
            len(run.handed_back),
            ", ".join(job.id for job in run.handed_back),
        )


def wait_for_storage(storage: Storage, job: Job, seconds: float, heartbeat) -> bool:
    """Back off after handing jobs back, holding none: probe storage (the photo of `job`) with
    backoff until it answers or `seconds` pass, or the worker is stopping. Whether it answered."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while not heartbeat.stopping and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(delay, left))
        try:
            storage.exists(job.input_key or files.input_key(job.id))
        except StorageUnavailable:
            delay = min(delay * 2, 4.0)
            continue
        except StorageError:  # a refusal is an answer: the outage is over
            pass
        log.info("storage answers again")
        return True
    return False


def finish_batch(narrated: Narrated, run: Run, *, store: JobStore, storage: Storage, engine, settings) -> None:
    """Encode the batch's MP3s, upload them, then record the batch's results in one write: each job
    succeeded, failed or lost (in `run`). Runs off the GPU's path when a finisher is used
    (worker/finisher.py), outside JOB_TIME_LIMIT: storage retries have their own deadline."""
    jobs = narrated.jobs
    retry = storage_retry(settings.storage_retry_seconds)
    stage_now = Stage.SPEECH  # encoding is the tail of the speech stage
    try:
        engine.encode(narrated.narrations)  # those the task encoded already are skipped
        metrics.stages_done(narrated.narrations)
        stage_now = Stage.UPLOAD
        for job_id in store.progress_batch(run.claimant, stage_now, [(job.id, {}) for job in jobs]):
            run.outcomes[job_id] = "lost"  # canceled while its batch was on the GPU or encoding
        pending = [(job, n) for job, n in zip(jobs, narrated.narrations, strict=True) if job.id not in run.outcomes]

        def store_one(item: tuple[Job, Any]) -> tuple[Job, JobStatus, dict]:
            job, narration = item
            try:
                with metrics.stage_timer("upload"):
                    return upload(storage, job, narration, run.claimant, retry)
            except StorageError as exc:  # this job fails; its batch-mates are recorded as they are
                log.warning("job %s: the upload failed: %s", job.id, exc)
                if not isinstance(exc, StorageUnavailable):
                    discard(storage, job.id, run.claimant)
                return job, JobStatus.FAILED, {"error": failure_message(exc, Stage.UPLOAD)}

        results = in_parallel(store_one, pending, "upload")  # each PUT is a round trip
        run.finish(store, results)  # one write records the whole batch
        for job, status, _ in results:
            if run.outcomes.get(job.id) == JobStatus.SUCCEEDED.value:
                tidy_other_runs(storage, job)
                remember_result(store, settings, job)
            elif status == JobStatus.SUCCEEDED:  # canceled meanwhile, or another run holds the job now
                discard(storage, job.id, run.claimant)  # this run's files belong to no one
    except RedisError as exc:
        log.warning("lost Redis while finishing %s (%s); they are requeued when their leases lapse", run.claimant, exc)
        run.outcomes.update((job.id, "abandoned") for job in run.pending(jobs))
    except Exception as exc:  # an encode or storage error ends the unfinished jobs, not the worker
        log.exception("jobs of %s failed in stage %s", run.claimant, stage_now.value)
        run.fail(store, run.pending(jobs), failure_message(exc, stage_now))


def failure_message(exc: Exception, stage: Stage) -> str:
    if isinstance(exc, StorageUnavailable):
        return STORAGE_DOWN_MESSAGE
    return f"the {stage.value} stage failed ({type(exc).__name__}: {exc})"


def upload(storage: Storage, job: Job, narration, claimant: str, retry: Callable) -> tuple[Job, JobStatus, dict]:
    """Store a job's MP3 and subtitles under this run's own keys: the job's result to record."""
    from worker.engine.subtitles import to_vtt

    key, vtt_key = files.audio_key(job.id, claimant), files.subtitles_key(job.id, claimant)
    retry(lambda: storage.put(key, narration.mp3, content_type="audio/mpeg"))
    vtt = to_vtt(getattr(narration, "words", None) or []).encode()
    retry(lambda: storage.put(vtt_key, vtt, content_type="text/vtt; charset=utf-8"))
    # The caption and story were recorded as their stages ended; the finished record has them.
    job.caption, job.story = narration.caption, narration.story
    timings = {name: round(seconds, 4) for name, seconds in narration.timings.items()}
    result = {"audio_key": key, "audio_seconds": round(narration.audio_seconds, 3), "subtitles_key": vtt_key}
    return job, JobStatus.SUCCEEDED, {**result, "timings": timings}


def discard(storage: Storage, job_id: str, claimant: str) -> None:
    """Best effort: a run's files for a job it did not finish (the bucket's lifecycle rule ages out
    what storage refuses to delete now)."""
    for key in (files.audio_key(job_id, claimant), files.subtitles_key(job_id, claimant)):
        try:
            storage.delete(key)
        except StorageError as exc:
            log.warning("could not delete %s: %s", key, exc)


def remember_result(store: JobStore, settings, job: Job) -> None:
    """A succeeded job with a seed answers later submits of the same photo, words, seed and style
    (shared/result_cache.py). Best effort: the job has succeeded whatever happens here."""
    if not getattr(settings, "result_cache", False):
        return
    try:
        key = result_cache.job_key(settings, job)  # the record as this run wrote it
        if key:
            result_cache.remember(store.redis, store.ttl, key, job)
    except Exception as exc:
        log.warning("could not cache the result of job %s: %s", job.id, exc)


def tidy_other_runs(storage: Storage, job: Job) -> None:
    """A run whose worker died after uploading left its MP3 (and subtitles) behind; the job has one
    result. Only a job that ran before can have such leftovers (a listing per job costs a round trip)."""
    if job.runs <= 1:
        return
    try:
        for prefix in files.run_prefixes(job.id):
            for key in storage.list(prefix):
                if key not in (job.audio_key, job.subtitles_key):
                    storage.delete(key)
    except StorageError as exc:
        log.warning("could not tidy the audio of job %s: %s", job.id, exc)


def storage_retry(seconds: float) -> Callable:
    """Run a storage call, retrying StorageUnavailable with backoff for up to `seconds` in all (the
    heartbeat keeps the jobs' leases alive meanwhile); then the last error is raised.

    One retry object serves a batch, whose calls run in parallel and meet the same outage: it warns
    once, not once per photo and per retry."""
    deadline = time.monotonic() + seconds
    retries = itertools.count()  # next() is atomic: the first of the batch's retries warns, whichever thread

    def call(action):
        delay = 0.5
        while True:
            try:
                return action()
            except StorageUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if next(retries):
                    log.debug("storage unavailable (%s); retrying in %.1fs", exc, delay)
                else:
                    log.warning("storage unavailable (%s); retrying for up to %.0fs", exc, deadline - time.monotonic())
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    return call


def check_style(engine, job: Job) -> None:
    """A job whose style or language this worker does not serve fails alone, not its whole batch
    (web and workers read the same STORY_STYLES and LANGUAGES; they differ only mid-rollout or by
    mistake)."""
    for check, value in (("style_problem", "style"), ("language_problem", "language")):
        problem = getattr(engine, check, None)
        message = problem(getattr(job, value, None)) if problem else None
        if message:
            raise JobFailed(message)


def read_images(jobs: list[Job], storage: Storage, engine, settings) -> list:
    """Each job's photo, decoded; or the JobFailed that ends the job; or, storage still unavailable
    after READ_RETRY_SECONDS (for the whole batch), the StorageUnavailable that hands it back to the
    queue. Read in parallel."""
    retry = storage_retry(min(settings.storage_retry_seconds, READ_RETRY_SECONDS))

    def read(job: Job):
        try:
            check_style(engine, job)
            return read_image(storage, job.input_key or files.input_key(job.id), settings.max_image_pixels, retry)
        except (JobFailed, StorageUnavailable) as exc:
            return exc

    return in_parallel(read, jobs, "read-image")


def in_parallel(func: Callable[[T], R], items: list[T], name: str) -> list[R]:
    """func over items on up to STORAGE_THREADS threads (storage calls are round trips), in order."""
    if len(items) <= 1:
        return [func(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(len(items), STORAGE_THREADS), thread_name_prefix=name)
    try:
        return list(pool.map(func, items))
    finally:  # the time limit may cut a batch short: drop the calls not yet started
        pool.shutdown(wait=False, cancel_futures=True)


def read_image(storage: Storage, key: str, max_pixels: int | None, retry: Callable):
    try:
        data = retry(lambda: storage.get(key))
    except StorageNotFound:
        raise JobFailed("the uploaded image is no longer in storage; please upload it again") from None
    except StorageUnavailable:
        raise  # not the job's fault: it waits in the queue for storage
    except StorageError as exc:  # e.g. access denied: retrying will not help
        raise JobFailed(f"storage refused the uploaded image ({exc})") from None
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise JobFailed(exc.message) from None
