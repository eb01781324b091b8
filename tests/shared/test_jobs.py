"""shared.jobs against a real Redis database."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from shared.jobs import Job, JobStatus, JobStore, Stage, decode_cursor, new_job_id
from shared.jobs.store import LUA, created_score

TTL = 600


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def store(client):
    return JobStore(client, TTL)


def make(store: JobStore, **fields) -> Job:
    return store.create(Job(id=new_job_id(), input_key="inputs/x", words=40, **fields))


def test_ids_are_random_and_url_safe():
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


def test_create_and_get_round_trip(store, client):
    job = make(store, seed=7, content_type="image/png", filename="cat.png")
    got = store.get(job.id)
    assert got == job
    assert got.status is JobStatus.QUEUED and got.stage is None
    assert 0 < client.ttl(store.key(job.id)) <= TTL
    assert store.get("nope") is None


def test_to_dict_is_json_ready(store):
    job = make(store, seed=3)
    store.claim("w1", first=job.id)
    store.progress(job.id, Stage.STORY, caption="a cat", timings={"caption": 0.25})
    data = store.get(job.id).to_dict()
    assert data["status"] == "running" and data["stage"] == "story"
    assert data["caption"] == "a cat" and data["timings"] == {"caption": 0.25}
    assert data["created_at"].endswith("Z") and data["started_at"].endswith("Z")
    assert data["finished_at"] is None and data["seed"] == 3 and data["words"] == 40


def test_worker_lifecycle(store):
    job = make(store)
    assert store.claim("w1", first=job.id)
    assert not store.claim("w2", first=job.id)  # a second worker cannot claim it again
    assert store.progress(job.id, "speech", story="Once upon a time.")
    assert store.succeed(job.id, "audio/x.mp3", 3.5, timings={"caption": 1.0, "story": 2.0})
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.stage is None
    assert done.audio_key == "audio/x.mp3" and done.audio_seconds == 3.5
    assert done.finished_at >= done.started_at >= done.created_at
    assert not store.cancel(job.id)  # finished is final
    assert not store.fail(job.id, "late error")
    assert store.get(job.id).status is JobStatus.SUCCEEDED


def test_canceled_job_never_succeeds(store):
    job = make(store)
    assert store.claim("w1", first=job.id)
    assert store.cancel(job.id)
    assert not store.progress(job.id, "story", caption="too late")
    assert not store.succeed(job.id, "audio/x.mp3", 1.0)
    got = store.get(job.id)
    assert got.status is JobStatus.CANCELED and got.caption is None and got.finished_at


def test_queued_job_can_fail_or_cancel(store):
    a, b = make(store), make(store)
    assert store.fail(a.id, "The image could not be read.")
    assert store.get(a.id).error == "The image could not be read."
    assert store.cancel(b.id)
    assert not store.claim("w1", first=b.id)


def test_transition_is_atomic_under_a_race(store):
    job = make(store)
    store.claim("w1", first=job.id)
    results = []
    barrier = threading.Barrier(2)

    def attempt(fn):
        barrier.wait()
        results.append(fn())

    threads = [
        threading.Thread(target=attempt, args=(lambda: store.cancel(job.id),)),
        threading.Thread(target=attempt, args=(lambda: store.succeed(job.id, "audio/x.mp3", 1.0),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(bool(r) for r in results) == [False, True]  # exactly one wins, whichever it is
    assert store.get(job.id).status in (JobStatus.CANCELED, JobStatus.SUCCEEDED)


def test_every_ending_transition_hands_the_records_it_wrote_to_notify(client):
    """The one place a job's end is told (its webhook, shared/webhooks/outbox.py): a job created
    finished, finish, cancel and the reaper's failures each hand on the records as written, once;
    transitions that end nothing hand on nothing."""
    told: list[Job] = []
    store = JobStore(client, TTL, notify=told.extend)
    hook = "https://hooks.example/h"
    cached = store.create(Job(id=new_job_id(), status=JobStatus.SUCCEEDED, finished_at=time.time(), webhook=hook))
    assert told == [cached]
    told.clear()

    done, lost, canceled, died = (make(store, webhook=hook) for _ in range(4))
    [claimed] = store.claim_jobs("w1", first=done.id)
    assert store.progress(done.id, Stage.STORY, claimant="w1", caption="a cat")
    assert told == []  # created queued, claimed, progressed: nothing ended
    claimed.caption = "a cat"
    assert store.finish_batch("w1", [(claimed, JobStatus.SUCCEEDED, {"audio_key": "audio/x.mp3"})]) == [claimed]
    assert store.finish_batch("w2", [(lost, JobStatus.FAILED, {"error": "not held"})]) == []
    [record] = told
    assert record is claimed and record == store.get(done.id)  # the record as written, not a copy read back
    assert record.status is JobStatus.SUCCEEDED and record.webhook == hook
    told.clear()

    record = store.cancel(canceled.id)
    assert told == [record] and record == store.get(canceled.id) and record.status is JobStatus.CANCELED
    assert record.webhook == hook and record.finished_at
    assert store.cancel(canceled.id) is None and store.cancel("missing") is None
    assert len(told) == 1  # a second cancel ends nothing
    told.clear()

    store.update(died.id, attempts=3, lone_deaths=2)  # two runs alone ended with their worker dying
    store.claim("w3", first=died.id, lease_seconds=0.05)
    time.sleep(0.1)
    assert store.reap(max_attempts=3) == ([], [died.id])
    [record] = told
    assert record == store.get(died.id) and record.status is JobStatus.FAILED and record.webhook == hook


def test_update_sets_removes_and_refreshes_ttl(store, client):
    job = make(store, seed=1)
    client.expire(store.key(job.id), 5)
    assert store.update(job.id, caption="x", seed=None)
    got = store.get(job.id)
    assert got.caption == "x" and got.seed is None
    assert client.ttl(store.key(job.id)) > 5
    assert not store.update("missing", caption="x")
    assert not store.cancel("missing") and not store.fail("missing", "gone")
    with pytest.raises(ValueError):
        store.update(job.id, id="other")


def test_records_expire(client):
    short = JobStore(client, 1)
    job = short.create(Job(id=new_job_id(), owner="key:me"))
    time.sleep(1.2)
    assert short.get(job.id) is None
    assert short.list() == ([], None)
    assert short.list(owner="key:me") == ([], None)
    assert client.zcard(JobStore.owner_index("key:me")) == 0  # the expired id was pruned from the index


# With an owner, the owner's index; without one, a scan of every record: both page alike.
@pytest.mark.parametrize("owner", [None, "key:me"])
def test_list_newest_first_with_cursor(store, owner):
    now = time.time()
    ids = [store.create(Job(id=f"job{i:02d}", created_at=now + i, owner=owner)).id for i in range(7)]
    store.create(Job(id="theirs", created_at=now + 3.5, owner="key:them"))
    ids_listed = ids if owner else [*ids[:4], "theirs", *ids[4:]]  # everyone's: theirs too
    page, cursor = store.list(limit=3, owner=owner)
    assert [j.id for j in page] == ids_listed[::-1][:3]
    page2, cursor2 = store.list(limit=3, cursor=cursor, owner=owner)
    assert [j.id for j in page2] == ids_listed[::-1][3:6]
    # A job created between pages is newer: it neither shifts nor repeats the older pages.
    store.create(Job(id="late", created_at=now + 100, owner=owner))
    page3, cursor3 = store.list(limit=3, cursor=cursor2, owner=owner)
    assert [j.id for j in page3] == ids_listed[::-1][6:] and cursor3 is None
    assert store.list(limit=1, owner=owner)[0][0].id == "late"


@pytest.mark.parametrize("owner", [None, "key:me"])
def test_list_handles_equal_timestamps_and_expired_entries(store, client, owner):
    now = time.time()
    for name in "abcdef":
        store.create(Job(id=name, created_at=now, owner=owner))
    client.delete(store.key("c"))  # expired meanwhile
    seen, cursor = [], None
    while True:
        page, cursor = store.list(limit=2, cursor=cursor, owner=owner)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == ["f", "e", "d", "b", "a"]
    if owner:
        assert client.zscore(JobStore.owner_index(owner), "c") is None


@pytest.mark.parametrize(
    "cursor", ["garbage!", "bm90LWEtY3Vyc29y", "%%%", "bm90OmE", "bmFuOng", "aW5mOng", "LWluZjp4"]
)  # nan:x, inf:x, -inf:x
def test_bad_cursor(store, cursor):
    with pytest.raises(ValueError):
        decode_cursor(cursor)
    with pytest.raises(ValueError):
        store.list(cursor=cursor)


# The lifecycle's one recovery mechanism: leases that a heartbeat renews, and a reaper.


def test_claim_fills_a_batch_oldest_first_after_the_named_job(store):
    now = time.time()
    jobs = [store.create(Job(id=f"j{i}", created_at=now + i, input_key="inputs/x")) for i in range(5)]
    assert store.claim("w1", limit=3, first="j3") == ["j3", "j0", "j1"]
    assert store.claim("w2", limit=3) == ["j2", "j4"]
    assert store.claim("w3", limit=3) == []
    got = store.get("j0")
    assert got.status is JobStatus.RUNNING and got.worker == "w1" and got.attempts == 1 and got.batch_size == 3
    assert store.queued_count() == 0 and len(jobs) == 5


def test_only_the_claimant_writes_a_running_job(store):
    job = make(store)
    assert store.claim("w1", first=job.id) == [job.id]
    assert not store.progress(job.id, "story", claimant="w2", caption="not mine")
    assert not store.succeed(job.id, "audio/x.mp3", 1.0, claimant="w2")
    assert not store.fail(job.id, "not mine", claimant="w2")
    assert store.progress(job.id, "story", claimant="w1", caption="mine")
    assert store.succeed(job.id, "audio/x.mp3", 1.0, claimant="w1")
    done = store.get(job.id)
    assert done.caption == "mine" and done.worker is None and store.redis.zscore(store.RUNNING, job.id) is None


def test_a_lapsed_lease_goes_back_to_the_queue_and_its_old_run_is_locked_out(store, client):
    job = make(store)
    store.claim("dead", first=job.id, lease_seconds=0.2)
    assert store.reap(max_attempts=3) == ([], [])  # still leased
    time.sleep(0.3)
    assert store.reap(max_attempts=3) == ([job.id], [])
    back = store.get(job.id)
    assert back.status is JobStatus.QUEUED and back.worker is None and back.started_at is None
    assert back.attempts == 1 and store.queued_count() == 1 and client.zcard(JobStore.RUNNING) == 0
    assert store.claim("live", first=job.id) == [job.id]
    assert not store.succeed(job.id, "audio/old.mp3", 1.0, claimant="dead")  # a late write of the dead run
    assert store.succeed(job.id, "audio/new.mp3", 1.0, claimant="live")
    assert store.get(job.id).audio_key == "audio/new.mp3" and store.get(job.id).attempts == 2


def test_renewed_leases_are_not_reaped(store):
    job = make(store)
    store.claim("w1", first=job.id, lease_seconds=0.3)
    for _ in range(4):
        time.sleep(0.15)
        assert store.renew("w1", [job.id], 0.3) == set()
        assert store.reap(max_attempts=3) == ([], [])
    assert store.renew("w2", [job.id], 0.3) == {job.id}  # not w2's
    store.cancel(job.id)
    assert store.renew("w1", [job.id], 0.3) == {job.id}


def test_a_job_out_of_attempts_fails_with_a_clear_error(store):
    job = make(store)
    for attempt in range(1, 4):
        assert store.claim(f"w{attempt}", first=job.id, lease_seconds=0.05) == [job.id]
        time.sleep(0.1)
        requeued, failed = store.reap(max_attempts=3)
        assert (requeued, failed) == (([job.id], []) if attempt < 3 else ([], [job.id]))
    got = store.get(job.id)
    assert got.status is JobStatus.FAILED and got.attempts == 3 and "worker stopped" in got.error
    assert got.finished_at and store.queued_count() == 0


def test_only_deaths_of_a_job_running_alone_count_against_max_attempts(store):
    now = time.time()
    for i in range(2):
        store.create(Job(id=f"j{i}", created_at=now + i))
    assert store.claim("batch", limit=8, lease_seconds=0.05) == ["j0", "j1"]
    time.sleep(0.1)
    assert store.reap(max_attempts=1) == (["j0", "j1"], [])  # either photo may have killed the batch
    assert store.claim("alone", first="j0", lease_seconds=0.05) == ["j0"]  # a rerun runs alone
    time.sleep(0.1)
    assert store.reap(max_attempts=1) == ([], ["j0"])  # its own death: out of attempts
    got = store.get("j0")
    assert got.status is JobStatus.FAILED and got.lone_deaths == 1 and "alone, 1 time(s)" in got.error
    assert store.get("j1").status is JobStatus.QUEUED and store.get("j1").lone_deaths == 0


def test_a_job_that_ran_before_runs_alone(store):
    now = time.time()
    for i in range(3):
        store.create(Job(id=f"j{i}", created_at=now + i))
    store.claim("dead", first="j1", lease_seconds=0.05)
    time.sleep(0.1)
    assert store.reap(max_attempts=3) == (["j1"], [])
    assert store.claim("w1", limit=8) == ["j0", "j2"]  # the rerun is left for a batch of its own
    assert store.claim("w2", limit=8) == ["j1"]
    assert store.get("j1").batch_size == 1


def test_release_hands_a_job_back_without_counting_the_attempt(store):
    job = make(store)
    store.claim("w1", first=job.id)
    store.progress(job.id, "story", claimant="w1", caption="half done")
    assert not store.release(job.id, "w2")
    assert store.release(job.id, "w1")
    back = store.get(job.id)
    assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.caption is None
    assert store.queued_ids(10) == [job.id]


def test_queue_and_index_scores_are_whole_microseconds_and_a_job_goes_back_to_its_own(store, client):
    job = make(store, owner="key:a")
    score = created_score(job.created_at)
    assert score == int(score) and abs(score / 1e6 - job.created_at) < 1e-6
    assert client.zscore(JobStore.owner_queue("key:a"), job.id) == score
    assert client.zscore(JobStore.owner_index("key:a"), job.id) == score
    # Stored as a number, not as text: a listpack keeps an integer as one (the reason for them).
    assert client.object("encoding", JobStore.owner_queue("key:a")) == b"listpack"
    store.claim("w1", first=job.id)
    assert store.release(job.id, "w1")  # back at its old place: the same score, from the record
    assert client.zscore(JobStore.owner_queue("key:a"), job.id) == score
    store.claim("dead", first=job.id, lease_seconds=0.05)
    time.sleep(0.1)
    assert store.reap(max_attempts=3) == ([job.id], [])
    assert client.zscore(JobStore.owner_queue("key:a"), job.id) == score


def test_the_scripts_put_a_job_back_at_the_score_its_submit_gave_it(client):
    """queues.lua's enqueue (release, reap, cancel) and created_score round alike, halves included:
    1796388340.7523324 s is 1796388340752332.5 us, where round-half-even and half-up part."""
    enqueue = client.register_script(
        (LUA / "queues.lua").read_text()
        + "enqueue('j', 'o', ARGV[1]); return redis.call('ZSCORE', 'jobs:queued:o', 'j')"
    )
    for created_at in (1796388340.7523324, 1700000000.0000005, 1700000000.123456, time.time()):
        assert int(enqueue(args=[repr(created_at)])) == created_score(created_at), created_at


def test_entries_scored_in_seconds_from_before_microseconds_keep_their_order(store, client):
    """An upgrade meets queues and indexes whose scores are seconds: they are older than any new
    job, and sort below every microsecond score, so they still come first in a queue and last in a
    listing; the index trim drops only those older than a record can be, in seconds."""
    now = time.time()
    old_queued = store.create(Job(id="old-queued", owner="key:a", created_at=now - 60))
    client.zadd(JobStore.owner_queue("key:a"), {old_queued.id: old_queued.created_at})  # as stored before
    client.zadd(JobStore.owner_index("key:a"), {old_queued.id: old_queued.created_at})
    stale = store.create(Job(id="stale", owner="key:a", created_at=now - 3 * TTL, status=JobStatus.SUCCEEDED))
    client.zadd(JobStore.owner_index("key:a"), {stale.id: stale.created_at})
    new = [store.create(Job(id=f"new{i}", owner="key:a", created_at=now + i)).id for i in range(3)]
    seen, cursor = [], None
    while True:
        page, cursor = store.list(limit=2, cursor=cursor, owner="key:a")
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == [*new[::-1], "old-queued"]
    assert client.zscore(JobStore.owner_index("key:a"), "stale") is None
    assert store.claim("w1", limit=2) == ["old-queued", "new0"]  # the queue: oldest first, either way


def test_batches_are_filled_round_robin_across_owners(store):
    now = time.time()
    a = [store.create(Job(id=f"a{i:03d}", owner="key:a", created_at=now + i)).id for i in range(100)]
    b = [store.create(Job(id=f"b{i}", owner="session:b", created_at=now + 200 + i)).id for i in range(2)]
    assert store.queued_count() == 102 and store.queued_count("key:a") == 100 and store.queued_count("session:b") == 2
    first = store.claim("w1", limit=8)
    assert set(b) <= set(first) and len(first) == 8  # B waits one batch at most, not 100 jobs
    assert [i for i in first if i.startswith("a")] == a[:6]  # each owner's own jobs stay in order
    assert store.claim("w1", limit=8) == a[6:14]
    c = store.create(Job(id="c0", owner=None, created_at=now + 300)).id  # an anonymous caller
    assert c in store.claim("w1", limit=8)


def test_a_rerun_does_not_hold_back_its_owner_s_other_jobs(store):
    now = time.time()
    for i in range(3):
        store.create(Job(id=f"j{i}", owner="key:a", created_at=now + i))
    store.claim("dead", first="j1", lease_seconds=0.05)
    time.sleep(0.1)
    store.reap(max_attempts=3)
    assert store.claim("w1", limit=8) == ["j0", "j2"]
    assert store.claim("w1", limit=8) == ["j1"]


def test_each_owner_lists_only_its_own_jobs(store):
    now = time.time()
    mine = [store.create(Job(id=f"m{i}", owner="key:me", created_at=now + i)).id for i in range(3)]
    store.create(Job(id="t0", owner="key:them", created_at=now))
    store.create(Job(id="n0", created_at=now))  # ownerless: never listed
    page, cursor = store.list(limit=2, owner="key:me")
    assert [j.id for j in page] == mine[::-1][:2] and cursor
    assert [j.id for j in store.list(limit=2, owner="key:me", cursor=cursor)[0]] == mine[:1]
    assert [j.id for j in store.list(owner="key:them")[0]] == ["t0"]
    store.delete("m0")
    assert [j.id for j in store.list(owner="key:me")[0]] == mine[:0:-1]
    assert store.queued_count("key:me") == 2


# A run's writes are per batch: one call per stage and one to finish, each checking the claimant per job.


def commands(client) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in client.info("commandstats").items()}


def load_scripts(store) -> None:
    """A script's first call in a Redis loads it (NOSCRIPT, SCRIPT LOAD, EVALSHA again): do it
    before counting."""
    store.progress_batch("nobody", Stage.STORY, [("none", {})])
    store.finish_batch("nobody", [(Job(id="none"), JobStatus.FAILED, {})])


def test_a_stage_is_written_for_the_whole_batch_in_one_call(store, client):
    jobs = [make(store, created_at=time.time() + i) for i in range(4)]
    claimed = store.claim_jobs("w1", limit=4)
    assert [job.id for job in claimed] == [job.id for job in jobs]
    assert all(job.status is JobStatus.RUNNING and job.worker == "w1" and job.batch_size == 4 for job in claimed)
    store.cancel(jobs[1].id)  # the client cancels one while the batch runs
    load_scripts(store)
    client.config_resetstat()
    lost = store.progress_batch("w1", Stage.STORY, [(job.id, {"caption": f"c{i}"}) for i, job in enumerate(jobs)])
    assert lost == {jobs[1].id}
    used = commands(client)
    assert used["evalsha"] == 1 and "zrem" not in used, used  # one call, no queue index touched
    assert [store.get(job.id).caption for job in jobs] == ["c0", None, "c2", "c3"]
    assert store.progress_batch("w2", Stage.SPEECH, [(jobs[0].id, {"story": "not mine"})]) == {jobs[0].id}


def test_finishing_a_batch_writes_once_and_hands_back_the_records(store, client):
    jobs = [make(store, created_at=time.time() + i) for i in range(3)]
    claimed = store.claim_jobs("w1", limit=3)
    store.cancel(jobs[2].id)
    load_scripts(store)
    client.config_resetstat()
    results = [
        (claimed[0], JobStatus.SUCCEEDED, {"audio_key": "audio/a.mp3", "audio_seconds": 1.5}),
        (claimed[1], JobStatus.FAILED, {"error": "the story stage failed"}),
        (claimed[2], JobStatus.SUCCEEDED, {"audio_key": "audio/c.mp3", "audio_seconds": 1.0}),
    ]
    ended = store.finish_batch("w1", results)
    assert commands(client).get("hgetall") is None and commands(client)["evalsha"] == 1  # nothing re-read
    assert [job.id for job in ended] == [jobs[0].id, jobs[1].id]  # the canceled one was not written
    for job in ended:  # the records as written, without a read
        assert job == store.get(job.id)
    assert ended[0].status is JobStatus.SUCCEEDED and ended[0].audio_key == "audio/a.mp3" and ended[0].worker is None
    assert ended[1].status is JobStatus.FAILED and ended[1].error == "the story stage failed"
    assert store.get(jobs[2].id).status is JobStatus.CANCELED
    assert client.zcard(store.RUNNING) == 0


def test_a_wakeup_whose_job_was_taken_claims_nothing(store):
    jobs = [make(store, created_at=time.time() + i) for i in range(3)]
    assert store.claim("w1", limit=2, first=jobs[0].id) == [jobs[0].id, jobs[1].id]
    # jobs[1]'s own wake-up arrives: its job is running, so it claims nothing (jobs[2] has a wake-up of its own)
    assert store.claim("w2", limit=2, first=jobs[1].id) == []
    assert store.claim("w2", limit=2, first=jobs[2].id) == [jobs[2].id]


def test_a_claim_drops_its_batch_s_own_waiting_wakeups_and_no_other(store, client, redis_url):
    """Celery's own messages, as the web and the reaper send them: a wake-up naming a job the batch
    took would only cost a worker a delivery to find its job gone; the others stay, a rerun's too."""
    from shared.jobs.queue import QUEUE, make_celery, wake
    from shared.settings import Settings

    now = time.time()
    rerun = make(store, created_at=now - 1)
    store.claim("dead", first=rerun.id, lease_seconds=0.05)
    jobs = [make(store, created_at=now + i) for i in range(5)]
    time.sleep(0.1)
    assert store.reap(max_attempts=3) == ([rerun.id], [])
    celery = make_celery(Settings(redis_url=redis_url))
    wake(celery, [job.id for job in jobs[:3]], first=True)  # the web's, at each submit
    wake(celery, [rerun.id])  # the reaper's
    wake(celery, [job.id for job in jobs[3:]], first=True)
    assert client.rpop(QUEUE)  # the worker took jobs[0]'s wake-up: it claims with it

    assert store.claim("w1", limit=3, first=jobs[0].id) == [job.id for job in jobs[:3]]  # the rerun waits
    waiting = [json.loads(message)["headers"]["argsrepr"] for message in client.lrange(QUEUE, 0, -1)]
    assert sorted(waiting) == sorted(repr([i]) for i in (jobs[3].id, jobs[4].id, rerun.id))
    # their wake-ups lie behind the rerun's, not at the tail: each is removed where it lies
    assert store.claim("w2", limit=3, first=jobs[3].id) == [jobs[3].id, jobs[4].id]
    assert [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(QUEUE, 0, -1)] == [repr([rerun.id])]


def test_a_claim_costs_the_same_whatever_the_number_of_owners_waiting(store, client):
    def claim_cost(owners: int) -> int:
        client.flushdb()
        store.claim("nobody", limit=1)  # loads the script; nothing is queued yet
        now = time.time()
        for i in range(owners):
            store.create(Job(id=f"o{i}", owner=f"key:{i}", created_at=now + i))
        client.config_resetstat()
        assert len(store.claim("w", limit=4)) == 4
        return sum(commands(client).values())

    few, many = claim_cost(4), claim_cost(2000)
    assert many == few, (few, many)


def test_an_owner_s_index_expires_with_its_last_job_and_lanes_share_a_queue(store, client):
    make(store, owner="session:gone-quiet")
    assert 0 < client.ttl(JobStore.owner_index("session:gone-quiet")) <= 2 * TTL
    a, b = make(store, lane="addr:203.0.113.9"), make(store, lane="addr:203.0.113.9")
    assert store.queued_count("addr:203.0.113.9") == 2 and a.owner is None
    assert client.zrange(JobStore.OWNERS, 0, -1).count(b"addr:203.0.113.9") == 1  # one lane, one turn
    claimed = store.claim("w", limit=8)
    assert {a.id, b.id} <= set(claimed) and store.queued_count("addr:203.0.113.9") == 0


def test_a_job_past_its_deadline_fails_when_a_claim_meets_it_and_takes_no_batch_slot(client):
    from shared.jobs.store import EXPIRED_MESSAGE

    told: list[Job] = []
    store = JobStore(client, TTL, notify=told.extend)
    now = time.time()
    late = store.create(Job(id="late", created_at=now - 5, deadline_at=now - 1))
    fine = [store.create(Job(id=f"fine{i}", created_at=now + i, deadline_at=now + 60)) for i in range(2)]
    assert store.claim("w", limit=2, first=late.id) == [job.id for job in fine]  # the late one took no slot
    expired = store.get(late.id)
    assert (
        expired.status is JobStatus.FAILED and expired.error == EXPIRED_MESSAGE and expired.error.startswith("expired")
    )
    assert expired.started_at is None and expired.attempts == 0 and expired.finished_at  # it never ran
    assert [job.id for job in told] == [late.id] and told[0].error == EXPIRED_MESSAGE  # its webhook, once
    assert store.queued_count() == 0 and store.claim("w2", limit=8) == []
    assert len(told) == 1
