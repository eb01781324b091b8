"""A heartbeat that no longer beats ends its worker before the next claim (the process-level case,
a thread that dies, is in tests/test_faults.py)."""

from __future__ import annotations

import threading
import time

import pytest

from shared.jobs import JobStore
from shared.settings import Settings
from worker.heartbeat import Heartbeat


class Exited(Exception):
    pass


@pytest.fixture
def beat(redis_url, monkeypatch):
    import redis

    settings = Settings(redis_url=redis_url, heartbeat_seconds=0.05, lease_seconds=0.3)
    heartbeat = Heartbeat(JobStore(redis.Redis.from_url(redis_url), 3600), settings, wake=lambda ids: None,
                          queue_length=lambda: 0)  # fmt: skip
    exits: list[str] = []

    def exit_(why: str) -> None:
        exits.append(why)
        if threading.current_thread() is threading.main_thread():
            raise Exited(why)  # in the test; in the heartbeat's own thread, recording it is enough

    monkeypatch.setattr(heartbeat, "_exit", exit_)
    heartbeat.exits = exits
    yield heartbeat
    heartbeat.state = "stopped"


def test_a_beating_heartbeat_lets_the_worker_take_jobs(beat):
    beat.start()
    time.sleep(0.8)  # longer than two leases: each round started since is recent
    assert beat.may_take_jobs() and beat.exits == []


def test_a_hung_round_ends_the_worker_before_its_next_claim(beat):
    release = threading.Event()
    beat.beat = lambda: release.wait(5)  # a round that never returns (a hung call)
    beat.start()
    time.sleep(0.8)  # two leases
    with pytest.raises(Exited, match="no heartbeat for over two leases"):
        beat.may_take_jobs()
    release.set()


def test_a_round_slowed_by_a_redis_failover_does_not_end_the_worker(beat):
    """A round held for more than a lease (Redis's client retrying through a failover) is not hung."""
    beat.settings = beat.settings.model_copy(update={"lease_seconds": 1.0})
    release = threading.Event()
    beat.beat = lambda: release.wait(5)
    beat.start()
    time.sleep(1.3)  # more than one lease into the round, less than two
    assert beat.may_take_jobs() and beat.exits == []
    release.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit it is about
def test_a_dead_heartbeat_thread_ends_the_worker(beat):
    def end():
        raise SystemExit

    beat.beat = end
    beat.start()
    beat._thread.join(2)
    assert beat.exits == ["the heartbeat thread died"]  # from the thread itself, as it ended
    with pytest.raises(Exited, match="heartbeat thread died"):
        beat.may_take_jobs()


def test_a_stopping_worker_takes_no_jobs_and_does_not_exit(beat):
    beat.stopping = True
    assert beat.may_take_jobs() is False and beat.exits == []
