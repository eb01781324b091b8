"""The worker's job lifecycle as plain functions: real Redis, real storage, the tiny models."""

from __future__ import annotations

import io
import time

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image
from pydub import AudioSegment

from shared.jobs import Job, JobStatus, JobStore, new_job_id
from shared.settings import Settings
from shared.storage import StorageUnavailable, open_storage
from worker.heartbeat import Heartbeat
from worker.limits import time_limit
from worker.runner import run_wakeup


def jpeg(color="orange") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, "JPEG")
    return buf.getvalue()


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

    def progress(self, job_id, stage, **changes):
        ok = super().progress(job_id, stage, **changes)
        job = self.get(job_id)
        self.published.append((str(getattr(stage, "value", stage)), job.status.value, job.caption, job.story))
        return ok


@pytest.fixture
def store(redis_url):
    return RecordingStore(redis.Redis.from_url(redis_url), ttl_seconds=3600)


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

    original = store.progress

    def progress(jid, stage, **changes):
        if str(getattr(stage, "value", stage)) == "story":
            store.cancel(jid)  # the client cancels while the caption is being written
        return original(jid, stage, **changes)

    store.progress = progress
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

    def narrate_batch(self, images, words, seeds, on_progress):
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


def test_storage_down_for_too_long_fails_the_job_clearly(store, storage, engine):
    class Down:
        def get(self, key):
            raise StorageUnavailable("connection refused")

    job_id = submit(store, storage, jpeg())
    assert run_job(job_id, store=store, storage=Down(), engine=engine) == "failed"
    assert store.get(job_id).error == "storage stayed unreachable; please try again later"


def test_time_limit_fails_the_job(store, storage):
    class Slow:
        def narrate_batch(self, images, words, seeds, on_progress):
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

    def narrate_batch(self, images, words, seeds, on_progress):
        self.batches.append(len(images))

        def progress(stage, fields):
            if stage == "story" and self.before_story:
                self.before_story()
            on_progress(stage, fields)

        return self.engine.narrate_batch(images, words=words, seeds=seeds, on_progress=progress)


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
        store.update(job_id, lease_until=time.time() - 1)
        store.redis.zadd(JobStore.RUNNING, {job_id: 0})
        assert store.reap(max_attempts=3) == ([job_id], [])
        assert store.claim("other", first=job_id) == [job_id]

    assert run_job(job_id, store=store, storage=storage, engine=Spy(engine, before_story=taken_back)) == "running"
    job = store.get(job_id)
    assert job.status is JobStatus.RUNNING and job.worker == "other" and job.caption is None
    assert storage.list("audio/") == []


def test_a_late_finish_cannot_overwrite_the_newer_result(store, storage, engine):
    from worker.runner import audio_key, finish_job, storage_retry

    job_id = submit(store, storage, jpeg())
    store.claim("host-a:1:old", first=job_id, lease_seconds=0.05)
    time.sleep(0.1)
    store.reap(max_attempts=3)
    store.claim("host-b:2:new", first=job_id)
    newer = audio_key(job_id, "host-b:2:new")
    storage.put(newer, b"the newer run's mp3")
    assert store.succeed(job_id, newer, 1.0, claimant="host-b:2:new")
    narration = engine.narrate(Image.open(io.BytesIO(jpeg())), words=12)
    assert finish_job(store, storage, job_id, narration, "host-a:1:old", storage_retry(0)) == "lost"
    assert store.get(job_id).audio_key == newer and storage.get(newer) == b"the newer run's mp3"
    assert storage.list("audio/") == [newer]


def test_a_heartbeat_keeps_a_long_batch_leased(store, storage, engine):
    settings = Settings(heartbeat_seconds=0.1, lease_seconds=0.3, storage_retry_seconds=0)
    beat = heartbeat_for(store, settings)
    beat.start()

    class Slow:
        def narrate_batch(self, images, words, seeds, on_progress):
            on_progress("caption", [{} for _ in images])
            for _ in range(12):  # four leases long, with a reaper looking all the while
                time.sleep(0.1)
                assert store.reap(max_attempts=3) == ([], [])
            return engine.narrate_batch(images, words=words, seeds=seeds, on_progress=on_progress)

    job_id = submit(store, storage, jpeg())
    outcomes = run_wakeup(job_id, store=store, storage=storage, engine=Slow(), heartbeat=beat, settings=settings)
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
    from worker.runner import audio_key

    job_id = submit(store, storage, jpeg())
    store.claim("host-a:1:dead", first=job_id, lease_seconds=0.05)
    storage.put(audio_key(job_id, "host-a:1:dead"), b"uploaded, then the worker was killed")
    time.sleep(0.1)
    assert store.reap(max_attempts=3) == ([job_id], [])
    assert run_job(job_id, store=store, storage=storage, engine=engine) == "succeeded"
    assert storage.list("audio/") == [store.get(job_id).audio_key]
