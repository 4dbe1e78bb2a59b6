"""The project's modules import each other without cycles, and without lazy imports to hide one.

The graph is read from the source (``ast``): an edge for every ``import`` or ``from ... import``
of a project module, at any depth of the file, so that an import moved into a function to break a
cycle still counts as the edge it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "schemas", "transforms")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imports_of(p, modules) for p in paths}
    for name, targets in graph.items():  # a package's __init__ is not a cycle of its modules
        targets.discard(name)
        targets -= {t for t in targets if name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through every strongly connected group of more than one module."""
    found, done = [], set()
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    cycle = [*path, start]
                    if not set(cycle) <= done:
                        found.append(cycle)
                        done |= set(cycle)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "transforms.deadletter" in graph["transforms.batches"]
    assert "transforms.elements" in graph["transforms.deadletter"]


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph()) == []


def test_no_lazy_module_attributes():
    """A module-level ``__getattr__`` imports on first use: a cycle hidden from readers."""
    lazy = [
        module_name(p)
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
            for node in ast.parse(p.read_text()).body
        )
    ]
    assert lazy == []
