"""Constants and switches every part of the test suite agrees on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))
TEST_SECRET_KEY = "test-secret-key-" + "x" * 32  # signs session cookies (SECRET_KEY is required)
GENEROUS_RATE_LIMIT = "10000/second"
# Every test submits from 127.0.0.1, most of them faster than a person: the per-address limit (on top
# of the per-owner ones, which service_env sets) is generous for every app and worker the tests start,
# unless a test sets its own (tests/web/test_rate_limits.py).
os.environ["SUBMIT_ADDRESS_RATE_LIMIT"] = GENEROUS_RATE_LIMIT


def requires_tool(found: bool, name: str):
    """Skip without the tool, except under `make test` (REQUIRE_SYSTEM_TOOLS=1), which installs it:
    there a missing tool fails the run instead of letting required tests quietly skip."""
    if not found and os.environ.get("REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(f"{name} is missing; `make test` should have installed it", pytrace=False)
    return pytest.mark.skipif(not found, reason=f"{name} is not installed (make test installs it)")
