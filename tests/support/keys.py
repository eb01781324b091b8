"""API keys for tests, made in-process by the project's own key store (web.middleware.auth.create_key, what
`flask keys create` calls): a subprocess per key cost seconds. tests/web/test_owners.py runs the
command itself."""

from __future__ import annotations

import redis

from web.middleware.auth import create_key


def create_api_key(env: dict, name: str) -> str:
    """A new key named `name` in the Redis at env["REDIS_URL"] (a service_env)."""
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        return create_key(client, name)
    finally:
        client.close()
