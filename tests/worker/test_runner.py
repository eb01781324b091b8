"""The worker's job lifecycle as a plain function: real Redis, real storage, the tiny models."""
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
from worker.limits import time_limit
from worker.runner import audio_key, run_job


def jpeg(color="orange") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tiny_models_dir):
    from worker.engine import Engine

    return Engine(Settings(caption_model=str(tiny_models_dir / "caption"), story_model=str(tiny_models_dir / "story"),
                           speech_model=str(tiny_models_dir / "speech"), device="cpu", story_words=12))


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
    store.create(Job(id=job_id, input_key=f"inputs/{job_id}", words=fields.get("words", 12), seed=fields.get("seed")))
    return job_id


def test_a_job_runs_stage_by_stage_to_an_mp3(store, storage, engine):
    job_id = submit(store, storage, jpeg(), seed=3)
    outcome = run_job(job_id, store=store, storage=storage, engine=engine)
    assert outcome.status == "succeeded"

    assert [stage for stage, *_ in store.published] == ["caption", "story", "speech", "upload"]
    assert all(status == "running" for _, status, *_ in store.published)
    caption_at_story = store.published[1][2]
    story_at_speech = store.published[2][3]
    assert caption_at_story and story_at_speech  # visible as soon as they exist

    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.stage is None
    assert job.caption == caption_at_story and job.story == story_at_speech
    assert job.audio_key == audio_key(job_id) and job.audio_seconds > 0
    assert set(job.timings) >= {"caption", "story", "speech"}
    assert job.started_at <= job.finished_at
    audio = AudioSegment.from_file(io.BytesIO(storage.get(job.audio_key)), format="mp3")
    assert audio.duration_seconds > 0


def test_rerun_after_a_crash_ends_in_one_result(store, storage, engine):
    job_id = submit(store, storage, jpeg("navy"), seed=5)
    store.claim(job_id)  # a worker took it, then died before finishing
    assert run_job(job_id, store=store, storage=storage, engine=engine).status == "succeeded"
    first = store.get(job_id)
    assert storage.list("audio/") == [audio_key(job_id)]

    # A redelivered message for a finished job changes nothing.
    assert run_job(job_id, store=store, storage=storage, engine=engine).status == "succeeded"
    assert store.get(job_id).finished_at == first.finished_at
    assert storage.list("audio/") == [audio_key(job_id)]


def test_a_canceled_job_is_not_run(store, storage, engine):
    job_id = submit(store, storage, jpeg())
    assert store.cancel(job_id)
    assert run_job(job_id, store=store, storage=storage, engine=engine).status == "canceled"
    assert store.published == [] and not storage.exists(audio_key(job_id))


def test_cancel_while_running_stops_at_the_next_stage(store, storage, engine):
    job_id = submit(store, storage, jpeg())

    original = store.progress

    def progress(jid, stage, **changes):
        if str(getattr(stage, "value", stage)) == "story":
            store.cancel(jid)  # the client cancels while the caption is being written
        return original(jid, stage, **changes)

    store.progress = progress
    assert run_job(job_id, store=store, storage=storage, engine=engine).status == "canceled"
    job = store.get(job_id)
    assert job.status is JobStatus.CANCELED and job.story is None
    assert not storage.exists(audio_key(job_id))


@pytest.mark.parametrize("data, message", [
    (b"this is not an image", "not"),
    (jpeg()[:200], "truncated"),
])
def test_a_bad_image_fails_the_job_with_a_clear_error(store, storage, engine, data, message):
    job_id = submit(store, storage, data)
    assert run_job(job_id, store=store, storage=storage, engine=engine).status == "failed"
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
    assert run_job(job_id, store=store, storage=storage, engine=BrokenStory()).status == "failed"
    job = store.get(job_id)
    assert job.error == "the story stage failed (RuntimeError: CUDA out of memory)"
    assert job.caption == "A cat"


def test_transient_storage_errors_propagate_for_a_retry(store, storage, engine):
    class Down:
        def get(self, key):
            raise StorageUnavailable("connection refused")

    job_id = submit(store, storage, jpeg())
    with pytest.raises(StorageUnavailable):
        run_job(job_id, store=store, storage=Down(), engine=engine)
    assert store.get(job_id).status is JobStatus.QUEUED  # a retry picks it up again


def test_time_limit_fails_the_job(store, storage):
    class Slow:
        def narrate_batch(self, images, words, seeds, on_progress):
            on_progress("caption", [{} for _ in images])
            time.sleep(5)

    job_id = submit(store, storage, jpeg())
    start = time.monotonic()
    with time_limit(0.3):
        outcome = run_job(job_id, store=store, storage=storage, engine=Slow())
    assert time.monotonic() - start < 3
    assert outcome.status == "failed" and "time limit" in store.get(job_id).error


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
    assert run_job(ids[2], store=store, storage=storage, engine=spy, batch_size=8).status == "succeeded"
    assert spy.batches == [5]
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 5
    assert {job.batch_size for job in jobs} == {5}
    assert sorted(storage.list("audio/")) == sorted(audio_key(job_id) for job_id in ids)
    # Their own messages arrive later and find nothing left to do.
    assert run_job(ids[0], store=store, storage=storage, engine=spy, batch_size=8).status == "succeeded"
    assert spy.batches == [5]


def test_the_batch_takes_the_oldest_queued_jobs_up_to_its_size(store, storage, engine):
    ids = [submit(store, storage, jpeg()) for _ in range(5)]
    spy = Spy(engine)
    run_job(ids[4], store=store, storage=storage, engine=spy, batch_size=3)
    assert spy.batches == [3]
    statuses = [store.get(job_id).status for job_id in ids]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.QUEUED,
                        JobStatus.SUCCEEDED]


def test_a_job_leased_by_a_live_worker_is_left_to_it(store, storage, engine):
    job_id = submit(store, storage, jpeg())
    assert store.claim(job_id, worker="gpu-7:1:1", lease_seconds=300)
    outcome = run_job(job_id, store=store, storage=storage, engine=engine)
    assert outcome.status == "leased" and 290 < outcome.retry_in <= 300
    assert store.get(job_id).worker == "gpu-7:1:1"

    store.update(job_id, lease_until=time.time() - 1)  # that worker died: its lease ran out
    assert run_job(job_id, store=store, storage=storage, engine=engine).status == "succeeded"


def test_canceling_one_job_of_a_batch_spares_the_others(store, storage, engine):
    ids = [submit(store, storage, jpeg(color)) for color in ("red", "green", "blue")]
    spy = Spy(engine, before_story=lambda: store.cancel(ids[1]))
    run_job(ids[0], store=store, storage=storage, engine=spy, batch_size=4)
    assert [store.get(job_id).status for job_id in ids] == [JobStatus.SUCCEEDED, JobStatus.CANCELED,
                                                           JobStatus.SUCCEEDED]
    assert not storage.exists(audio_key(ids[1])) and storage.exists(audio_key(ids[2]))


def test_a_transient_error_hands_the_batch_back_to_the_queue(store, storage, engine):
    ids = [submit(store, storage, jpeg()) for _ in range(3)]

    class Flaky:
        def narrate_batch(self, images, words, seeds, on_progress):
            on_progress("caption", [{} for _ in images])
            raise StorageUnavailable("connection reset")

    with pytest.raises(StorageUnavailable):
        run_job(ids[0], store=store, storage=storage, engine=Flaky(), batch_size=4)
    # All go back to the queue, so whichever worker gets each retried message may run it at once.
    assert [store.get(job_id).status for job_id in ids] == [JobStatus.QUEUED] * 3
    assert store.get(ids[0]).worker is None
    assert run_job(ids[1], store=store, storage=storage, engine=engine, batch_size=1).status == "succeeded"


def test_a_claim_never_takes_a_live_lease_even_when_racing(store, storage):
    job_id = submit(store, storage, jpeg())
    assert store.claim(job_id, worker="w2", lease_seconds=300)
    # The check and the write are one step in Redis: a stale read elsewhere cannot win.
    assert not store.claim(job_id, (JobStatus.QUEUED, JobStatus.RUNNING), worker="w1")
    assert store.get(job_id).worker == "w2"
    store.update(job_id, lease_until=time.time() - 1)
    assert store.claim(job_id, (JobStatus.QUEUED, JobStatus.RUNNING), worker="w1")
    assert store.get(job_id).worker == "w1"


def test_a_run_whose_job_was_taken_over_stops_publishing(store, storage, engine):
    job_id = submit(store, storage, jpeg())

    def take_over():  # our lease looked expired to another worker, which claimed the job
        store.update(job_id, lease_until=time.time() - 1)
        assert store.claim(job_id, (JobStatus.RUNNING,), worker="other", lease_seconds=300)

    run_job(job_id, store=store, storage=storage, engine=Spy(engine, before_story=take_over))
    job = store.get(job_id)
    assert job.status is JobStatus.RUNNING and job.worker == "other" and job.caption is None
    assert not storage.exists(audio_key(job_id))


def test_finishing_a_job_another_run_finished_keeps_its_audio(store, storage, engine):
    from worker.runner import finish_job

    job_id = submit(store, storage, jpeg())
    assert store.claim(job_id, worker="other")
    storage.put(audio_key(job_id), b"the other run's mp3")
    assert store.succeed(job_id, audio_key(job_id), 1.0, claimant="other")
    narration = engine.narrate(Image.open(io.BytesIO(jpeg())), words=12)
    assert finish_job(store, storage, job_id, narration, worker="late").status == "succeeded"
    assert storage.exists(audio_key(job_id))


def test_storage_refusing_the_image_fails_the_batch_clearly(store, storage, engine):
    from shared.storage import StorageError

    ids = [submit(store, storage, jpeg()) for _ in range(2)]

    class Denied:
        def get(self, key):
            raise StorageError("AccessDenied")

    assert run_job(ids[0], store=store, storage=Denied(), engine=engine, batch_size=4).status == "failed"
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.FAILED] * 2
    assert all("storage refused the uploaded image" in job.error for job in jobs)


def test_losing_the_claim_race_keeps_the_message_alive(redis_url, storage, engine):
    class RivalFirst(JobStore):
        def claim(self, job_id, *args, **kwargs):
            super().claim(job_id, worker="rival", lease_seconds=300)  # gets in between our read and claim
            return super().claim(job_id, *args, **kwargs)

    store = RivalFirst(redis.Redis.from_url(redis_url), ttl_seconds=3600)
    job_id = submit(store, storage, jpeg())
    outcome = run_job(job_id, store=store, storage=storage, engine=engine)
    assert outcome.status == "leased" and outcome.retry_in > 250
    assert store.get(job_id).worker == "rival"


def test_a_worker_cannot_release_or_fail_a_job_another_live_worker_runs(store, storage):
    job_id = submit(store, storage, jpeg())
    assert store.claim(job_id, worker="w2", lease_seconds=300)
    assert not store.release(job_id, claimant="w1")
    assert not store.fail(job_id, "boom", claimant="w1")
    assert store.get(job_id).status is JobStatus.RUNNING
    assert store.release(job_id, claimant="w2")
    assert store.get(job_id).status is JobStatus.QUEUED


def test_an_unexpected_error_while_forming_the_batch_leaves_no_job_running(store, storage, engine):
    ids = [submit(store, storage, jpeg()) for _ in range(2)]

    def broken_update(job_id, **changes):
        raise RuntimeError("bookkeeping broke")

    store.update = broken_update
    assert run_job(ids[0], store=store, storage=storage, engine=engine, batch_size=4).status == "failed"
    assert [store.get(job_id).status for job_id in ids] == [JobStatus.FAILED] * 2
