"""The structure itself: no import circle among the project's modules, and no test hooks in the code
that ships (web/, worker/, shared/ know no test photo name and no test-only setting)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "web", "worker", "training", "narrator_client")
SHIPPED = ("shared", "web", "worker")
TEST_HOOKS = ("__kill_worker__", "__sleep_", "__slow_finish_", "TEST_FAULT_HOOKS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module this one imports, at the top or inside a function (an import moved into
    a function to dodge a circle is still a circle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_circle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
    modules = project_modules()
    known = set(modules)
    # A module imports its own package's __init__ implicitly; that edge is not a circle of ours.
    graph = {
        name: {t for t in imports_of(path, name, known) if not name.startswith(t + ".")}
        for name, path in modules.items()
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_shipped_code_knows_no_test_hooks():
    offenders = [
        f"{path.relative_to(ROOT)}: {hook}"
        for package in SHIPPED
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix in (".py", ".lua", ".html", ".js")
        for hook in TEST_HOOKS
        if hook in path.read_text()
    ]
    assert offenders == []
