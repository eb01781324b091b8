"""The one place that decides how to reach Redis: REDIS_URL's host, or the master Sentinel names.

With REDIS_SENTINELS empty (the default) everything connects to REDIS_URL as it is. With
REDIS_SENTINELS=host:port,host:port,... every client asks those Sentinels for the current master of
REDIS_MASTER_NAME (default `mymaster`) and follows it through a failover; REDIS_URL then only carries
the database number, the password (and user) and TLS (`rediss://`), its host and port are ignored.

- `redis_client`: the job store, leases, locks, API keys, rate limits, webhooks state (redis-py's
  `Sentinel(...).master_for(...)`: every new connection asks a Sentinel, a connection to a master
  that became a replica is dropped, so clients move to the new master by themselves);
- `broker_url` and `broker_transport_options`: Celery's broker (kombu's `sentinel://` transport with
  `master_name`), for the web app, the GPU workers and the webhooks worker alike;
- `wait_for_replicas`: the durability step after a job is accepted (see its docstring).

Sentinels themselves are reached without a password (the stock sentinel.conf has none); the Redis
servers get REDIS_URL's.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import redis
from redis.connection import SSLConnection, parse_url
from redis.sentinel import Sentinel

from shared.settings import Settings

# Asking a Sentinel is quick or that Sentinel is gone (the next one is asked): never wait long on it.
SENTINEL_SOCKET = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
# After creating a job: at least this many replicas must have it within this many milliseconds.
WAIT_REPLICAS = 1
WAIT_TIMEOUT_MS = 500


def sentinels(settings: Settings) -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs; empty when Sentinel is not used."""
    found = []
    for item in (settings.redis_sentinels or "").split(","):  # checked by Settings: host:port each
        if item.strip():
            host, _, port = item.strip().rpartition(":")
            found.append((host.strip("[]"), int(port)))
    return found


def uses_sentinel(settings: Settings) -> bool:
    return bool(sentinels(settings))


def _url_options(settings: Settings) -> dict:
    """What REDIS_URL says besides its host and port: db, username, password, query options, TLS."""
    options = parse_url(settings.redis_url)
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True  # SentinelConnectionPool picks its TLS connection class from this
    return options


def redis_client(settings: Settings, **socket_options) -> redis.Redis:
    """A client of the current master. `socket_options` (timeouts, retry, health checks) apply to
    the connections to Redis itself, not to the Sentinels (SENTINEL_SOCKET)."""
    if not uses_sentinel(settings):
        return redis.Redis.from_url(settings.redis_url, **socket_options)
    manager = Sentinel(sentinels(settings), sentinel_kwargs=dict(SENTINEL_SOCKET))
    return manager.master_for(settings.redis_master_name, **{**_url_options(settings), **socket_options})


def broker_url(settings: Settings) -> str:
    """REDIS_URL, or one `sentinel://[user:password@]host:port/db` per Sentinel joined by `;`
    (kombu reads the credentials and database from the first, the addresses from all)."""
    if not uses_sentinel(settings):
        return settings.redis_url
    parts = urlsplit(settings.redis_url)
    userinfo = parts.netloc.rpartition("@")[0]
    auth = f"{userinfo}@" if userinfo else ""
    db = _url_options(settings).get("db", 0)
    return ";".join(f"sentinel://{auth}{_host(host)}:{port}/{db}" for host, port in sentinels(settings))


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _keepalive_options() -> dict:
    """TCP options (Linux names; those this platform lacks are left out) for the broker connections."""
    wanted = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 10_000}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def broker_transport_options(settings: Settings) -> dict:
    """Kombu's Redis transport. A worker's consumer waits on its BRPOP connection in the event loop,
    where socket_timeout does not apply: a master that vanishes without closing the connection (its
    host powered off, a network partition) would leave the worker waiting forever while Sentinel
    promotes another. TCP keepalive probes (the connection is never idle for more than the 1 s BRPOP
    timeout while the master lives) and TCP_USER_TIMEOUT (for unacknowledged data) turn that into a
    connection error within about 10 s, and the worker reconnects to the master Sentinel names."""
    options = {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
    }
    if uses_sentinel(settings):
        options.update(master_name=settings.redis_master_name, sentinel_kwargs=dict(SENTINEL_SOCKET))
    return options


def wait_for_replicas(
    client: redis.Redis,
    settings: Settings,
    key: str,
    ttl: int,
    replicas: int = WAIT_REPLICAS,
    timeout_ms: int = WAIT_TIMEOUT_MS,
) -> int | None:
    """With Sentinel: block until `replicas` replicas have every write made before this call, or
    `timeout_ms` passed; returns how many acknowledged (None without Sentinel: nothing to wait for).

    Replication is asynchronous, so a failover right after a write can lose it. WAIT counts the
    writes of its own connection, and a pool hands out any connection: so WAIT goes in one pipeline
    (one connection) right after a write of its own, the job key's expiry set again to its TTL.
    That write comes after everything this request wrote (the job record, its wake-up message,
    its Idempotency-Key reservation), and replication keeps order, so a replica that has it has them all."""
    if not uses_sentinel(settings):
        return None
    pipe = client.pipeline(transaction=False)
    pipe.expire(key, ttl)
    pipe.wait(replicas, timeout_ms)
    return int(pipe.execute()[-1])
