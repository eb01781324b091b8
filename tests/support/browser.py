"""Debian's Chromium for Playwright: where it is and how it is started (headless, no network of its own),
and how a test waits for the page."""

from __future__ import annotations

import time

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def until(page, expression: str, timeout: float = 10.0):
    """Poll a JS expression until it is truthy. (wait_for_function's string predicate is checked by an
    eval inside the page, which the CSP refuses: it fails whenever the first check is false.)"""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(expression)):
        if time.monotonic() > deadline:
            pytest.fail(f"still false after {timeout}s: {expression}")
        time.sleep(0.02)
    return value
