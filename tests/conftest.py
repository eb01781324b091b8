"""The fixtures live in tests/support/fixtures.py (a plugin, so that test modules import helpers from
tests.support and never from a conftest or from one another)."""

pytest_plugins = ["tests.support.fixtures"]
