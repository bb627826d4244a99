"""The package's imports flow one way: no import cycle between vditscope modules, counting imports inside
functions and under TYPE_CHECKING too (a cycle hidden in a function is still a cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vditscope

PACKAGE = Path(vditscope.__file__).parent


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE.parent) -> set[str]:
    """The vditscope modules ``path`` imports, wherever in the file (resolved to existing modules)."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                break
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_check_finds_cycles_and_hidden_imports(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    hidden = tmp_path / "vditscope" / "x.py"
    hidden.parent.mkdir()
    hidden.write_text("def f():\n    from .y import g\n")
    assert imports_of(hidden, {"vditscope", "vditscope.x", "vditscope.y"}, tmp_path) == {"vditscope.y"}
    assert imports_of(PACKAGE / "report" / "html.py", set(import_graph())) >= {"vditscope.media"}


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Any module can be the first one imported (no import that works only in some order)."""
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    names = sorted(import_graph())
    for order in (names, names[::-1]):
        result = subprocess.run([sys.executable, "-c", script, *order], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr


ALLOWED = {  # folder -> the folders it may import (README "Layout")
    "adapters": {"errors", "layout", "models", "progress", "tiny"},
    "stats": {"layout", "thresholds"},
    "capture": {"adapters", "errors", "layout", "stats", "thresholds"},
    "executors": {"adapters", "errors", "progress", "tiny"},
    "store": {"errors", "version"},
    "report": {"analyses", "layout", "media", "stats", "store"},
    "training": {
        "adapters",
        "analyses",
        "capture",
        "data",
        "errors",
        "models",
        "progress",
        "stats",
        "store",
        "thresholds",
        "tiny",
    },
}
REPORT_READS = {
    "vditscope.analyses.findings",
    "vditscope.analyses.results",
    "vditscope.analyses.structure",
    "vditscope.analyses.sweep_tables",
}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_folders_import_only_what_the_layout_allows() -> None:
    graph = import_graph()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if folder(module) in ALLOWED
        and folder(target) != folder(module)
        and folder(target) not in ALLOWED[folder(module)]
    )
    wrong += sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if folder(module) == "report"
        for target in targets
        if folder(target) == "analyses" and target not in REPORT_READS
    )
    assert wrong == []


def test_no_module_or_test_imports_a_private_name() -> None:
    tests = Path(__file__).parent
    found = []
    for path in [*PACKAGE.rglob("*.py"), *tests.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("vditscope")):
                found += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert found == []
