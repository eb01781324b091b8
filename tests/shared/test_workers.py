"""Worker presence (what /readyz counts) holds on Redis's clock: a host whose clock is off changes nothing."""

from __future__ import annotations

import time

import pytest

from shared.jobs import workers


@pytest.fixture
def client(redis_url):
    import redis

    return redis.Redis.from_url(redis_url)


def test_a_host_two_minutes_ahead_neither_hides_nor_is_hidden(client, monkeypatch):
    workers.announce(client, "on-time", {"state": "ready"}, ttl=20)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)  # the other host's clock
    workers.announce(client, "ahead", {"state": "busy"}, ttl=20)
    assert workers.worker_counts(client) == {"live": 2, "ready": 2, "busy": 1}
    monkeypatch.setattr(time, "time", real)
    assert workers.worker_counts(client) == {"live": 2, "ready": 2, "busy": 1}


def test_a_worker_that_stops_beating_drops_out_and_one_that_retires_leaves_at_once(client):
    workers.announce(client, "lapsing", {"state": "ready"}, ttl=0.2)
    workers.announce(client, "leaving", {"state": "ready"}, ttl=20)
    assert workers.worker_counts(client)["live"] == 2
    workers.retire(client, "leaving")
    assert [w["id"] for w in workers.live_workers(client)] == ["lapsing"]
    time.sleep(0.3)
    assert workers.live_workers(client) == []
    assert client.scard(workers.WORKERS) == 0  # the lapsed one's id went with it
    workers.announce(client, "lapsing", {"state": "ready"}, ttl=20)  # beating again: back
    assert workers.worker_counts(client)["live"] == 1
