"""Parts built at most once per owner, on first use, even when threads ask for them at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Once:
    """Named parts, each built by its factory on first use. A factory that raises caches nothing,
    so the next caller tries again (e.g. storage that was down at first)."""

    def __init__(self):
        # The threads pool may ask for the same part at once; a part may be built from others.
        self._lock = threading.RLock()
        self._parts: dict[str, Any] = {}

    def __call__(self, name: str, factory: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._parts:
                self._parts[name] = factory()
            return self._parts[name]

    def __iter__(self):
        """The names built so far."""
        with self._lock:
            return iter(list(self._parts))
