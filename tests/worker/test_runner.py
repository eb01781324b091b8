"""The worker's job lifecycle as plain functions: real Redis, real storage, the tiny models (fake
engines where the test is about timing: a batch finishing in the background while the next one runs)."""

from __future__ import annotations

import io
import logging
import threading
import time

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image
from pydub import AudioSegment

from shared.jobs import Job, JobStatus, JobStore, new_job_id
from shared.settings import Settings
from shared.storage import StorageUnavailable, open_storage
from tests.support.photos import photo
from worker import metrics
from worker.engine import Narration
from worker.finisher import Finisher
from worker.heartbeat import Heartbeat
from worker.limits import time_limit
from worker.runner import READ_RETRY_SECONDS, STORAGE_DOWN_MESSAGE, run_wakeup


def jpeg(color="orange", size=(48, 40)) -> bytes:
    return photo(color, size)


@pytest.fixture(scope="module")
def engine(tiny_models_dir):
    from worker.engine import Engine

    return Engine(
        Settings(
            caption_model=str(tiny_models_dir / "caption"),
            story_model=str(tiny_models_dir / "story"),
            speech_model=str(tiny_models_dir / "speech"),
            device="cpu",
            story_words=12,
        )
    )


class RecordingStore(JobStore):
    """The real store, remembering each stage it published and what the job held at that moment."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.published = []

    def claim_jobs(self, *args, **kwargs):
        jobs = super().claim_jobs(*args, **kwargs)
        for job in jobs:  # a claimed job is at the caption stage
            self.record("caption", job.id)
        return jobs

    def progress_batch(self, claimant, stage, changes):
        lost = super().progress_batch(claimant, stage, changes)
        for job_id, _ in changes:
            self.record(stage, job_id)
        return lost

    def record(self, stage, job_id):
        job = self.get(job_id)
        self.published.append((str(getattr(stage, "value", stage)), job.status.value, job.caption, job.story))


@pytest.fixture
def store(redis_url):
    """`store.notified`: the ids of the jobs whose end the store told (their webhooks), in order."""
    notified: list[str] = []
    store = RecordingStore(
        redis.Redis.from_url(redis_url),
        ttl_seconds=3600,
        notify=lambda jobs: notified.extend(job.id for job in jobs if job.status.finished),
    )
    store.notified = notified
    return store


@pytest.fixture
def storage(tmp_path):
    storage = open_storage(f"file://{tmp_path}/data")
    storage.ensure_ready()
    return storage


def submit(store, storage, data: bytes, **fields) -> str:
    job_id = new_job_id()
    storage.put(f"inputs/{job_id}", data)
    store.create(
        Job(
            id=job_id,
            input_key=f"inputs/{job_id}",
            words=fields.get("words", 12),
            seed=fields.get("seed"),
            filename=fields.get("filename"),
        )
    )
    return job_id


def heartbeat_for(store, settings) -> Heartbeat:
    woken = []
    beat = Heartbeat(store, settings, wake=woken.extend, queue_length=lambda: 0)
    beat.woken = woken
    return beat


def run_job(job_id, *, store, storage, engine, batch_size=1, **overrides) -> str:
    """One wake-up for `job_id`, as the Celery task runs it; returns the job's status afterwards."""
    settings = Settings(**{"worker_batch_size": batch_size, "storage_retry_seconds": 0, **overrides})
    run_wakeup(
        job_id, store=store, storage=storage, engine=engine, heartbeat=heartbeat_for(store, settings), settings=settings
    )
    job = store.get(job_id)
    return job.status.value if job else "missing"


def audio_of(store, job_id) -> str:
    return store.get(job_id).audio_key


def test_a_job_runs_stage_by_stage_to_an_mp3(store, storage, engine):
    job_id = submit(store, storage, jpeg(), seed=3)
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "succeeded"

    assert [stage for stage, *_ in store.published] == ["caption", "story", "speech", "upload"]
    assert all(status == "running" for _, status, *_ in store.published)
    caption_at_story = store.published[1][2]
    story_at_speech = store.published[2][3]
    assert caption_at_story and story_at_speech  # visible as soon as they exist

    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.stage is None
    assert job.caption == caption_at_story and job.story == story_at_speech
    assert job.audio_key.startswith(f"audio/{job_id}/") and job.audio_seconds > 0 and job.attempts == 1
    assert set(job.timings) >= {"caption", "story", "speech"}
    assert job.started_at <= job.finished_at
    audio = AudioSegment.from_file(io.BytesIO(storage.get(job.audio_key)), format="mp3")
    assert audio.duration_seconds > 0


def test_a_message_for_a_finished_job_changes_nothing(store, storage, engine):
    job_id = submit(store, storage, jpeg("navy"), seed=5)
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "succeeded"
    first = store.get(job_id)
    assert storage.list("audio/") == [first.audio_key]
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "succeeded"
    assert store.get(job_id).finished_at == first.finished_at
    assert storage.list("audio/") == [first.audio_key]


def test_a_canceled_job_is_not_run(store, storage, engine):
    job_id = submit(store, storage, jpeg())
    assert store.cancel(job_id)
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "canceled"
    assert store.published == [] and storage.list("audio/") == []


def test_cancel_while_running_stops_at_the_next_stage(store, storage, engine):
    job_id = submit(store, storage, jpeg())

    original = store.progress_batch

    def progress_batch(claimant, stage, changes):
        if str(getattr(stage, "value", stage)) == "story":
            store.cancel(job_id)  # the client cancels while the caption is being written
        return original(claimant, stage, changes)

    store.progress_batch = progress_batch
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "canceled"
    job = store.get(job_id)
    assert job.status is JobStatus.CANCELED and job.story is None
    assert storage.list("audio/") == []


@pytest.mark.parametrize(
    "data, message",
    [
        (b"this is not an image", "not"),
        (jpeg()[:200], "truncated"),
    ],
)
def test_a_bad_image_fails_the_job_with_a_clear_error(store, storage, engine, data, message):
    job_id = submit(store, storage, data)
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "failed"
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED and message in job.error.lower()
    assert "Traceback" not in job.error and job.finished_at


def test_a_vanished_upload_fails_the_job(store, storage, engine):
    job_id = submit(store, storage, jpeg())
    storage.delete(f"inputs/{job_id}")
    run_job(job_id, store=store, storage=storage, engine=engine)
    assert "upload it again" in store.get(job_id).error


class BrokenStory:
    """An engine whose story model fails, as a CUDA out-of-memory error would."""

    def narrate_batch(self, images, words, seeds, on_progress, encode=True):
        on_progress("caption", [{} for _ in images])
        on_progress("story", [{"caption": "A cat"} for _ in images])
        raise RuntimeError("CUDA out of memory")


def test_a_model_error_fails_the_job_and_names_the_stage(store, storage):
    job_id = submit(store, storage, jpeg())
    assert run_job(job_id, store=store, storage=storage, engine=BrokenStory()) == "failed"
    job = store.get(job_id)
    assert job.error == "the story stage failed (RuntimeError: CUDA out of memory)"
    assert job.caption == "A cat"


def test_a_storage_outage_is_retried_until_storage_answers(store, storage, engine):
    class Flaky:
        """Storage that is down for its first three calls, as in a short outage."""

        def __init__(self):
            self.calls = 0

        def __getattr__(self, name):
            def call(*args, **kwargs):
                self.calls += 1
                if self.calls <= 3:
                    raise StorageUnavailable("connection refused")
                return getattr(storage, name)(*args, **kwargs)

            return call

    job_id = submit(store, storage, jpeg())
    flaky = Flaky()
    assert run_job(job_id, store=store, storage=flaky, engine=engine, storage_retry_seconds=30) == "succeeded"
    assert flaky.calls >= 5 and storage.exists(store.get(job_id).audio_key)


class Outage:
    """The storage, with every call on the keys `down_for` names finding it unavailable while `down`;
    counts the calls that found it down."""

    def __init__(self, storage, down_for=lambda key: True):
        self.storage, self.down_for, self.down, self.refused = storage, down_for, True, 0

    def __getattr__(self, name):
        method = getattr(self.storage, name)

        def call(key, *args, **kwargs):
            if self.down and self.down_for(key):
                self.refused += 1
                raise StorageUnavailable("connection refused")
            return method(key, *args, **kwargs)

        return call


def wait_until(condition, timeout: float) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout}s"
        time.sleep(0.05)


def test_a_batch_that_cannot_read_its_photos_goes_back_to_the_queue(store, storage, engine, caplog):
    """Storage down as a batch reads its photos (STORAGE_RETRY_SECONDS at its default, 120): within
    seconds its jobs are queued again as they were (no attempt counted, no error, no stage), and the
    worker, holding none of them, waits for storage rather than claim them again at once; once storage
    answers, it stops waiting, and the next wake-up runs them."""
    settings = Settings(worker_batch_size=4)
    assert settings.storage_retry_seconds == 120
    caplog.set_level(logging.INFO, logger="worker.runner")
    ids = [submit(store, storage, jpeg(size=(40 + i, 30))) for i in range(3)]
    outage, beat, answers = Outage(storage), heartbeat_for(store, settings), []
    kwargs = dict(store=store, storage=outage, engine=engine, heartbeat=beat, settings=settings)
    task = threading.Thread(target=lambda: answers.append(run_wakeup(ids[0], **kwargs)))
    task.start()

    def handed_back():
        jobs = [store.get(job_id) for job_id in ids]
        return all(job.runs == 1 and job.status is JobStatus.QUEUED for job in jobs)

    wait_until(handed_back, timeout=READ_RETRY_SECONDS + 5)
    # Three photos read in parallel, each retried for seconds: one warning for the batch's outage.
    outage_lines = [r for r in caplog.records if "storage unavailable" in r.getMessage()]
    assert [r.levelno for r in outage_lines] == [logging.WARNING], [r.getMessage() for r in outage_lines]
    for job in (store.get(job_id) for job_id in ids):
        assert (job.attempts, job.error, job.stage, job.worker, job.started_at) == (0, None, None, None, None)
    assert sorted(store.queued_ids(10)) == sorted(ids) and store.notified == []
    refused = outage.refused
    time.sleep(1.5)
    assert task.is_alive() and beat._held == {}  # waiting for storage, holding no job
    assert outage.refused > refused  # it asks storage meanwhile
    outage.down = False
    wait_until(lambda: not task.is_alive(), timeout=6)
    assert answers == [dict.fromkeys(ids, "queued")]
    assert sorted(beat.woken) == sorted(ids)  # the claim dropped their waiting wake-ups: new ones

    assert run_job(ids[1], store=store, storage=outage, engine=engine, batch_size=4) == "succeeded"
    jobs = [store.get(job_id) for job_id in ids]
    assert [(job.status, job.attempts) for job in jobs] == [(JobStatus.SUCCEEDED, 1)] * 3
    assert all(storage.exists(job.audio_key) for job in jobs)


def test_a_photo_storage_cannot_serve_goes_back_while_its_batch_mates_run(store, storage, engine):
    ids = [submit(store, storage, jpeg(size=(40 + i, 30))) for i in range(3)]
    outage = Outage(storage, down_for=lambda key: key == f"inputs/{ids[1]}")
    settings = Settings(worker_batch_size=4, storage_retry_seconds=0)
    beat = heartbeat_for(store, settings)
    answer = run_wakeup(ids[0], store=store, storage=outage, engine=engine, heartbeat=beat, settings=settings)
    assert answer == {ids[0]: "succeeded", ids[1]: "queued", ids[2]: "succeeded"}
    back = store.get(ids[1])
    assert (back.status, back.attempts, back.error, back.audio_key) == (JobStatus.QUEUED, 0, None, None)
    assert sorted(store.notified) == sorted([ids[0], ids[2]]) and beat._held == {}


def test_time_limit_fails_the_job(store, storage):
    class Slow:
        def narrate_batch(self, images, words, seeds, on_progress, encode=True):
            on_progress("caption", [{} for _ in images])
            time.sleep(5)

    job_id = submit(store, storage, jpeg())
    start = time.monotonic()
    assert run_job(job_id, store=store, storage=storage, engine=Slow(), job_time_limit=1) == "failed"
    assert time.monotonic() - start < 4
    assert "time limit" in store.get(job_id).error


def test_time_limit_raises_soft_time_limit():
    with pytest.raises(SoftTimeLimitExceeded):
        with time_limit(0.1):
            time.sleep(2)


class Spy:
    """The real engine, remembering the size of every batch it ran."""

    def __init__(self, engine, before_story=None):
        self.engine, self.batches, self.before_story = engine, [], before_story

    def narrate_batch(self, images, words, seeds, on_progress, encode=True):
        self.batches.append(len(images))

        def progress(stage, fields):
            if stage == "story" and self.before_story:
                self.before_story()
            on_progress(stage, fields)

        return self.engine.narrate_batch(images, words=words, seeds=seeds, on_progress=progress, encode=encode)

    def __getattr__(self, name):  # encode, batch_size: the engine's
        return getattr(self.engine, name)


def test_queued_jobs_share_one_batch(store, storage, engine):
    ids = [submit(store, storage, jpeg(color), seed=None) for color in ("red", "green", "blue", "gray", "pink")]
    spy = Spy(engine)
    assert run_job(ids[2], store=store, storage=storage, engine=spy, batch_size=8) == "succeeded"
    assert spy.batches == [5]
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 5
    assert {job.batch_size for job in jobs} == {5}
    assert sorted(storage.list("audio/")) == sorted(job.audio_key for job in jobs)
    # Their own messages arrive later and find nothing left to do.
    assert run_job(ids[0], store=store, storage=storage, engine=spy, batch_size=8) == "succeeded"
    assert spy.batches == [5]  # no second batch, no parking: the wake-up is simply done


def test_the_batch_takes_the_oldest_queued_jobs_up_to_its_size(store, storage, engine):
    ids = [submit(store, storage, jpeg()) for _ in range(5)]
    spy = Spy(engine)
    run_job(ids[4], store=store, storage=storage, engine=spy, batch_size=3)
    assert spy.batches == [3]
    statuses = [store.get(job_id).status for job_id in ids]
    assert statuses == [
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
        JobStatus.QUEUED,
        JobStatus.QUEUED,
        JobStatus.SUCCEEDED,
    ]


def test_canceling_one_job_of_a_batch_spares_the_others(store, storage, engine):
    ids = [submit(store, storage, jpeg(color)) for color in ("red", "green", "blue")]
    spy = Spy(engine, before_story=lambda: store.cancel(ids[1]))
    run_job(ids[0], store=store, storage=storage, engine=spy, batch_size=4)
    assert [store.get(job_id).status for job_id in ids] == [
        JobStatus.SUCCEEDED,
        JobStatus.CANCELED,
        JobStatus.SUCCEEDED,
    ]
    assert store.get(ids[1]).audio_key is None and storage.exists(store.get(ids[2]).audio_key)
    assert len(storage.list("audio/")) == 2


def test_storage_refusing_the_image_fails_the_batch_clearly(store, storage, engine):
    from shared.storage import StorageError

    ids = [submit(store, storage, jpeg()) for _ in range(2)]

    class Denied:
        def get(self, key):
            raise StorageError("AccessDenied")

    assert run_job(ids[0], store=store, storage=Denied(), engine=engine, batch_size=4) == "failed"
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.FAILED] * 2
    assert all("storage refused the uploaded image" in job.error for job in jobs)


def test_a_run_that_lost_its_jobs_changes_nothing_and_leaves_no_audio(store, storage, engine):
    job_id = submit(store, storage, jpeg())

    def taken_back():  # this worker stopped beating: the reaper took the job back, another run has it
        store.redis.zadd(JobStore.RUNNING, {job_id: 0})  # its lease lapsed
        assert store.reap(max_attempts=3) == ([job_id], [])
        assert store.claim("other", first=job_id) == [job_id]

    assert run_job(job_id, store=store, storage=storage, engine=Spy(engine, before_story=taken_back)) == "running"
    job = store.get(job_id)
    assert job.status is JobStatus.RUNNING and job.worker == "other" and job.caption is None
    assert storage.list("audio/") == []


def test_a_late_finish_cannot_overwrite_the_newer_result(store, storage, engine):
    from shared.jobs.files import audio_key
    from worker.runner import Narrated, Run, finish_batch

    job_id = submit(store, storage, jpeg())
    store.claim("host-a:1:old", first=job_id, lease_seconds=0.05)
    time.sleep(0.1)
    store.reap(max_attempts=3)
    store.claim("host-b:2:new", first=job_id)
    newer = audio_key(job_id, "host-b:2:new")
    storage.put(newer, b"the newer run's mp3")
    assert store.succeed(job_id, newer, 1.0, claimant="host-b:2:new")
    narration = engine.narrate(Image.open(io.BytesIO(jpeg())), words=12)
    old = Run("host-a:1:old")
    late = Narrated(old.claimant, [store.get(job_id)], [narration])
    finish_batch(late, old, store=store, storage=storage, engine=engine, settings=Settings(storage_retry_seconds=0))
    assert old.outcomes == {job_id: "lost"} and old.ended == []
    assert store.get(job_id).audio_key == newer and storage.get(newer) == b"the newer run's mp3"
    assert storage.list("audio/") == [newer]


def test_a_heartbeat_keeps_a_long_batch_leased(store, storage, engine):
    settings = Settings(heartbeat_seconds=0.1, lease_seconds=0.3, storage_retry_seconds=0)
    beat = heartbeat_for(store, settings)
    beat.start()

    class Slow(Spy):
        def narrate_batch(self, images, words, seeds, on_progress, encode=True):
            on_progress("caption", [{} for _ in images])
            for _ in range(12):  # four leases long, with a reaper looking all the while
                time.sleep(0.1)
                assert store.reap(max_attempts=3) == ([], [])
            return super().narrate_batch(images, words, seeds, on_progress, encode)

    job_id = submit(store, storage, jpeg())
    outcomes = run_wakeup(job_id, store=store, storage=storage, engine=Slow(engine), heartbeat=beat, settings=settings)
    beat.retire()
    assert outcomes == {job_id: "succeeded"} and store.get(job_id).attempts == 1


def test_a_stopping_worker_takes_no_new_jobs(store, storage, engine):
    settings = Settings(storage_retry_seconds=0)
    beat = heartbeat_for(store, settings)
    beat.stopping = True
    job_id = submit(store, storage, jpeg())
    assert run_wakeup(job_id, store=store, storage=storage, engine=engine, heartbeat=beat, settings=settings) == {}
    assert store.get(job_id).status is JobStatus.QUEUED


def test_the_reaper_wakes_queued_jobs_whose_message_was_lost(store):
    settings = Settings()
    job = store.create(Job(id=new_job_id()))
    beat = Heartbeat(store, settings, wake=(woken := []).extend, queue_length=lambda: 3)
    beat.reap()
    assert woken == []  # the broker still holds wake-ups
    beat.queue_length = lambda: 0
    beat.reap()
    assert woken == [job.id]


def test_the_audio_of_a_run_that_died_after_uploading_is_removed(store, storage, engine):
    from shared.jobs.files import audio_key

    job_id = submit(store, storage, jpeg())
    store.claim("host-a:1:dead", first=job_id, lease_seconds=0.05)
    storage.put(audio_key(job_id, "host-a:1:dead"), b"uploaded, then the worker was killed")
    time.sleep(0.1)
    assert store.reap(max_attempts=3) == ([job_id], [])
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "succeeded"
    assert storage.list("audio/") == [store.get(job_id).audio_key]


# --- a batch finishing in the background while the next one uses the GPU (worker/finisher.py) ---


class Timed:
    """A fake engine whose GPU stages take `gpu_seconds` and whose MP3 names its photo (by size, which
    JPEG keeps exactly); remembers when each batch was on the "GPU" and when each encode began."""

    def __init__(self, gpu_seconds: float, fail_encode: bool = False):
        self.gpu_seconds, self.fail_encode = gpu_seconds, fail_encode
        self.gpu: list[tuple[float, float, list[str]]] = []  # (start, end, photo names)
        self.encodes: list[tuple[float, list[str]]] = []

    def narrate_batch(self, images, words, seeds, on_progress, encode=True):
        assert encode is False  # the worker encodes off the GPU's path
        start = time.monotonic()
        names = ["x".join(map(str, image.size)) for image in images]
        on_progress("caption", [{} for _ in images])
        on_progress("story", [{"caption": f"a {name} photo"} for name in names])
        time.sleep(self.gpu_seconds)
        on_progress("speech", [{"story": f"once upon a {name} photo"} for name in names])
        self.gpu.append((start, time.monotonic(), names))
        return [
            Narration(f"a {n} photo", f"once upon a {n} photo", b"", 1.0, 16000, {"speech": 0.1}, speech=n)
            for n in names
        ]

    def encode(self, narrations):
        self.encodes.append((time.monotonic(), [n.speech for n in narrations]))
        if self.fail_encode:
            raise RuntimeError("ffmpeg exited with status 1")
        for narration in narrations:
            narration.mp3, narration.speech = mp3_of(narration.speech), None
            narration.timings["encode"] = 0.01
        return narrations


def mp3_of(name: str) -> bytes:
    return f"the mp3 of the {name} photo".encode()


class SlowPuts:
    """Storage whose uploads take `seconds` each (a slow S3), remembering when each one ran; `fail`
    names keys whose upload finds storage down."""

    def __init__(self, storage, seconds: float, fail=lambda key: False):
        self.storage, self.seconds, self.fail = storage, seconds, fail
        self.puts: list[tuple[str, float, float]] = []  # (key, start, end)

    def put(self, key, data, **kwargs):
        start = time.monotonic()
        time.sleep(self.seconds)
        if self.fail(key):
            raise StorageUnavailable("connection refused")
        self.storage.put(key, data, **kwargs)
        self.puts.append((key, start, time.monotonic()))

    def __getattr__(self, name):
        return getattr(self.storage, name)

    def uploads_of(self, job_ids) -> tuple[float, float]:
        """When the first upload of these jobs began and the last one ended."""
        spans = [(start, end) for key, start, end in self.puts if key.split("/")[1] in job_ids]
        return min(start for start, _ in spans), max(end for _, end in spans)


def finished_count(status: str) -> float:
    return metrics.REGISTRY.get_sample_value("narrator_jobs_finished_total", {"status": status}) or 0.0


def test_the_next_batch_uses_the_gpu_while_the_last_one_uploads(store, storage):
    """Three wake-ups in a row, as the solo pool runs them: each returns once its GPU part is done and
    the previous batch has finished; the next batch's GPU part overlaps the last one's uploads, two
    batches never finish at once, and the heartbeat keeps the finishing batch's leases (a reaper looks
    every 0.1 s; a lease is 0.5 s; a batch finishes in 1 s)."""
    settings = Settings(worker_batch_size=2, storage_retry_seconds=0, heartbeat_seconds=0.1, lease_seconds=0.5)
    beat = heartbeat_for(store, settings)
    beat.start()
    engine, slow = Timed(gpu_seconds=0.3), SlowPuts(storage, seconds=0.25)  # 2 jobs: 4 uploads, 1 s
    sizes = [(40 + i, 30) for i in range(6)]
    ids = [submit(store, storage, jpeg(size=size)) for size in sizes]
    finisher, answers = Finisher(), []
    succeeded_before = finished_count("succeeded")
    for first in ids[::2]:
        answers.append(
            run_wakeup(
                first,
                store=store,
                storage=slow,
                engine=engine,
                heartbeat=beat,
                settings=settings,
                finisher=finisher,
            )
        )
        answers[-1]["returned"] = time.monotonic()
    assert finisher.wait(timeout=30)
    beat.retire()

    batches = [ids[0:2], ids[2:4], ids[4:6]]
    assert [{k: v for k, v in a.items() if k != "returned"} for a in answers] == [
        dict.fromkeys(batch, "finishing") for batch in batches
    ]
    assert [names for _, _, names in engine.gpu] == [[f"{w}x{h}" for w, h in sizes[i : i + 2]] for i in (0, 2, 4)]
    for k in (1, 2):
        gpu_start, _, _ = engine.gpu[k]
        _, last_upload_before = slow.uploads_of(batches[k - 1])
        # Overlap: this batch was on the GPU while the previous one was still uploading...
        assert gpu_start < last_upload_before, f"batch {k} waited for batch {k - 1}'s uploads"
        # ...but only one batch finishes at a time: its encode began after the previous batch's last upload,
        # and its wake-up returned only then (back-pressure).
        assert engine.encodes[k][0] >= last_upload_before
        assert answers[k]["returned"] >= last_upload_before
    assert answers[0]["returned"] < slow.uploads_of(batches[0])[1]  # the first returned while uploading

    jobs = [store.get(job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 6
    assert [job.attempts for job in jobs] == [1] * 6  # never reaped while finishing
    for job, (w, h) in zip(jobs, sizes, strict=True):
        assert storage.get(job.audio_key) == mp3_of(f"{w}x{h}")
        assert job.story == f"once upon a {w}x{h} photo" and set(job.timings) >= {"speech", "encode"}
    assert sorted(store.notified) == sorted(ids)  # each job's webhook once
    assert finished_count("succeeded") - succeeded_before == 6  # each outcome counted once


@pytest.mark.parametrize("in_background", [True, False])
def test_encoding_goes_to_the_finisher_only_where_it_helps(store, storage, in_background):
    """ENCODE_IN_BACKGROUND: on a GPU the finisher encodes beside the next batch; on a CPU the task
    encodes before handing over (encoding would compete with the next batch for the cores), and the
    finisher only uploads and records."""
    settings = Settings(worker_batch_size=2, storage_retry_seconds=0)
    ids = [submit(store, storage, jpeg(size=(40 + i, 30))) for i in range(2)]
    engine, threads = Timed(0), []
    encode = engine.encode
    engine.encode = lambda narrations: threads.append(threading.current_thread().name) or encode(narrations)
    finisher = Finisher()
    answer = run_wakeup(
        ids[0],
        store=store,
        storage=storage,
        engine=engine,
        heartbeat=heartbeat_for(store, settings),
        settings=settings,
        finisher=finisher,
        encode_in_background=in_background,
    )
    assert answer == dict.fromkeys(ids, "finishing") and finisher.wait(timeout=30)
    assert threads[0] == ("finisher" if in_background else threading.current_thread().name)
    assert all(store.get(job_id).status is JobStatus.SUCCEEDED for job_id in ids)


def test_without_a_finisher_a_wakeup_answers_every_final_status(store, storage):
    settings = Settings(worker_batch_size=4, storage_retry_seconds=0)
    ids = [submit(store, storage, jpeg(size=(40 + i, 30))) for i in range(2)]
    bad = submit(store, storage, b"not a photo")
    outcomes = run_wakeup(
        ids[0],
        store=store,
        storage=SlowPuts(storage, 0),
        engine=Timed(0),
        heartbeat=heartbeat_for(store, settings),
        settings=settings,
    )
    assert outcomes == {ids[0]: "succeeded", ids[1]: "succeeded", bad: "failed"}
    assert sorted(store.notified) == sorted([*ids, bad])


def test_an_error_while_finishing_fails_only_the_unfinished_jobs(store, storage):
    """Storage down for the second job's upload (past STORAGE_RETRY_SECONDS): the first job has
    succeeded and stays so; the second fails with the storage message; both get their webhook once."""
    settings = Settings(worker_batch_size=2, storage_retry_seconds=0)
    ids = [submit(store, storage, jpeg(size=(40 + i, 30))) for i in range(2)]
    slow = SlowPuts(storage, 0, fail=lambda key: key.startswith(f"audio/{ids[1]}/"))
    finisher = Finisher()
    failed_before = finished_count("failed")
    answer = run_wakeup(
        ids[0],
        store=store,
        storage=slow,
        engine=Timed(0),
        heartbeat=(beat := heartbeat_for(store, settings)),
        settings=settings,
        finisher=finisher,
    )
    assert answer == dict.fromkeys(ids, "finishing")
    assert finisher.wait(timeout=30)
    first, second = (store.get(job_id) for job_id in ids)
    assert first.status is JobStatus.SUCCEEDED and storage.exists(first.audio_key)
    assert second.status is JobStatus.FAILED and second.error == STORAGE_DOWN_MESSAGE
    assert storage.list(f"audio/{ids[1]}/") == []
    assert sorted(store.notified) == sorted(ids)
    assert finished_count("failed") - failed_before == 1
    assert beat._held == {}  # the leases are no longer renewed


@pytest.mark.parametrize("in_background", [True, False], ids=["encoded-by-the-finisher", "encoded-by-the-task"])
def test_an_encode_error_fails_the_batch_and_names_the_stage(store, storage, in_background):
    settings = Settings(worker_batch_size=2, storage_retry_seconds=0)
    ids = [submit(store, storage, jpeg(size=(40 + i, 30))) for i in range(2)]
    finisher = Finisher()
    run_wakeup(
        ids[0],
        store=store,
        storage=storage,
        engine=Timed(0, fail_encode=True),
        heartbeat=(beat := heartbeat_for(store, settings)),
        settings=settings,
        finisher=finisher,
        encode_in_background=in_background,
    )
    assert finisher.wait(timeout=30) and beat._held == {}  # no lease left renewed
    for job_id in ids:
        job = store.get(job_id)
        assert job.status is JobStatus.FAILED
        assert job.error == "the speech stage failed (RuntimeError: ffmpeg exited with status 1)"
    assert storage.list("audio/") == []


def test_a_job_canceled_after_the_gpu_part_is_not_uploaded(store, storage):
    """Batch 2's job is canceled as its batch is handed over, while batch 1 is still uploading."""
    settings = Settings(worker_batch_size=1, storage_retry_seconds=0)
    ids = [submit(store, storage, jpeg(size=(40 + i, 30))) for i in range(2)]

    class CancelingAtHandOver(Finisher):
        def submit(self, work):
            if store.get(ids[1]).status is JobStatus.RUNNING:
                assert store.cancel(ids[1])
            super().submit(work)

    finisher = CancelingAtHandOver()
    kwargs = dict(
        store=store,
        storage=SlowPuts(storage, 0.2),
        engine=Timed(0),
        heartbeat=heartbeat_for(store, settings),
        settings=settings,
        finisher=finisher,
    )
    assert run_wakeup(ids[0], **kwargs) == {ids[0]: "finishing"}
    assert run_wakeup(ids[1], **kwargs) == {ids[1]: "finishing"}
    assert finisher.wait(timeout=30)
    assert store.get(ids[0]).status is JobStatus.SUCCEEDED
    job = store.get(ids[1])
    assert job.status is JobStatus.CANCELED and job.audio_key is None and storage.list(f"audio/{ids[1]}/") == []
    # Each once: the canceled job's from the store's cancel, never again from the run that lost it.
    assert sorted(store.notified) == sorted(ids)


def test_a_rerun_waits_for_the_finishing_batch_before_its_gpu_part(store, storage):
    """A job whose earlier run died may be a photo that kills workers: it runs alone (store.claim) and
    only once no other batch is finishing, which it could take down with it."""
    settings = Settings(worker_batch_size=4, storage_retry_seconds=0)
    engine, slow, finisher = Timed(0), SlowPuts(storage, 0.2), Finisher()
    kwargs = dict(
        store=store,
        storage=slow,
        engine=engine,
        heartbeat=heartbeat_for(store, settings),
        settings=settings,
        finisher=finisher,
    )
    first = submit(store, storage, jpeg(size=(40, 30)))
    assert run_wakeup(first, **kwargs) == {first: "finishing"}
    rerun = submit(store, storage, jpeg(size=(41, 30)))
    store.update(rerun, attempts=1)  # its first run's worker died; the reaper put it back
    assert run_wakeup(rerun, **kwargs) == {rerun: "finishing"}
    assert finisher.wait(timeout=30)
    assert engine.gpu[1][0] >= slow.uploads_of([first])[1]
    assert [store.get(job_id).status for job_id in (first, rerun)] == [JobStatus.SUCCEEDED] * 2
    assert store.get(rerun).attempts == 2


def test_the_finisher_runs_one_batch_at_a_time():
    finisher, running, most = Finisher(), [], []
    lock = threading.Lock()

    def work():
        with lock:
            running.append(1)
            most.append(len(running))
        time.sleep(0.05)
        with lock:
            running.pop()

    for _ in range(4):
        finisher.submit(work)
    assert finisher.wait(timeout=5) and most == [1, 1, 1, 1]
    finisher.submit(lambda: 1 / 0)  # a bug in the work is logged; the next batch still runs
    finisher.submit(work)
    assert finisher.wait(timeout=5) and most == [1] * 5
