"""Signing secrets: one `whsec_` secret per owner (created on first use), WEBHOOK_SECRET for
ownerless jobs."""

from __future__ import annotations

import base64
import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks symmetric secret: 32 random bytes, base64, prefixed `whsec_`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(owner: str) -> str:
    return f"webhook:secret:{owner}"


def owner_secret(redis_client, owner: str) -> str:
    """The owner's signing secret, created on first use (SET NX: concurrent callers agree)."""
    key = secret_key(owner)
    redis_client.set(key, new_secret(), nx=True)
    value = redis_client.get(key)
    return value.decode() if isinstance(value, bytes) else value


def signing_secret(redis_client, owner: str | None, settings) -> str | None:
    return owner_secret(redis_client, owner) if owner else settings.webhook_secret
