"""Signing secrets: one `whsec_` secret per owner (created on first use), WEBHOOK_SECRET for
ownerless jobs.

An owner's secret can be rotated (the new one signs every delivery from then on, the old one no
longer) and is forgotten with its API key, so a key created again under the same name gets a new
one. A browser session's secret lives SESSION_SECRET_TTL after its last use: sessions come and go
without anyone revoking them.
"""

from __future__ import annotations

import base64
import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks symmetric secret: 32 random bytes, base64, prefixed `whsec_`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(owner: str) -> str:
    return f"webhook:secret:{owner}"


SESSION_SECRET_TTL = 30 * 24 * 3600  # longer than a job lives, so no delivery outlives its secret


def _ttl(owner: str) -> int | None:
    return SESSION_SECRET_TTL if owner.startswith("session:") else None


def owner_secret(redis_client, owner: str) -> str:
    """The owner's signing secret, created on first use (SET NX: concurrent callers agree)."""
    key, ttl = secret_key(owner), _ttl(owner)
    pipe = redis_client.pipeline(transaction=False)
    pipe.set(key, new_secret(), nx=True)
    if ttl:
        pipe.expire(key, ttl)
    pipe.get(key)
    value = pipe.execute()[-1]
    return value.decode() if isinstance(value, bytes) else value


def rotate_secret(redis_client, owner: str) -> str:
    """A new secret for the owner, in force at once: every later delivery is signed with it."""
    secret = new_secret()
    redis_client.set(secret_key(owner), secret, ex=_ttl(owner))
    return secret


def forget_secret(redis_client, owner: str) -> None:
    redis_client.delete(secret_key(owner))


def signing_secret(redis_client, owner: str | None, settings) -> str | None:
    return owner_secret(redis_client, owner) if owner else settings.webhook_secret
