"""The test suite's own layout: helpers and fixtures live in tests/support; no test module imports
another test module or a conftest (a helper moved or renamed there would break modules far away)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_test_modules_import_helpers_from_tests_support_only():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("tests.") and not name.startswith("tests.support"):
                    offenders.append(f"{path.relative_to(TESTS.parent)}:{node.lineno}: {name}")
    assert offenders == []
