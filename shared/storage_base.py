"""The storage contract: the Storage base class, its errors and the key rules every backend shares.

Callers see only these errors, whatever the backend: StorageUnavailable means "retry later or answer
503", StorageNotFound a missing key, StorageError anything else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class StorageError(Exception):
    """A storage operation failed for a reason retrying will not fix (bad key, denied, ...)."""


class StorageUnavailable(StorageError):
    """The storage could not be reached (transient: connection refused, timeout, 5xx)."""


class StorageNotFound(StorageError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


def check_key(key: str) -> str:
    """Refuse keys that are empty, absolute or climb out of the root with '..'."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"invalid storage key {key!r}")
    if any(part in ("..", ".", "") for part in key.split("/")):  # also catches "a//b" and "dir/"
        raise StorageError(f"invalid storage key {key!r}")
    return key


class Storage(ABC):
    url: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]: ...

    def presigned_url(
        self, key: str, expires: int, content_type: str = "audio/mpeg", filename: str | None = None
    ) -> str | None:
        """A URL anyone can GET for `expires` seconds; None where the backend has none (local)."""
        return None

    def local_path(self, key: str) -> Path | None:
        return None

    @abstractmethod
    def ensure_ready(self) -> None: ...

    @abstractmethod
    def check(self) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
