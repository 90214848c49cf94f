"""The package's import structure: no cycles (function-level imports included), utils at the bottom.

The layer contracts themselves are import-linter's (`make lint`, pyproject.toml); these checks cover what a
layers contract cannot see: cycles inside one layer and imports hidden inside functions.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import grimp

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "glm"


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("glm", cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _is_package_init_edge(importer: str, imported: str) -> bool:
    # `glm.x.y` importing its own package `glm.x` (its __init__) is how Python loads it, not a design cycle
    return importer.startswith(imported + ".")


def test_cycle_finder_finds_a_cycle() -> None:
    class Toy:
        modules = {"a", "b", "c"}

        @staticmethod
        def find_modules_directly_imported_by(m: str) -> set[str]:
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}}[m]

    assert _cycles(Toy()) == [["a", "b", "c"]]  # type: ignore[arg-type]


def test_no_import_cycles() -> None:
    graph = _graph()
    for importer in list(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            if _is_package_init_edge(importer, imported):
                graph.remove_import(importer=importer, imported=imported)
    assert _cycles(graph) == []


def test_utils_import_no_other_glm_package() -> None:
    graph = _graph()
    bad = sorted(
        f"{m} -> {imp}"
        for m in graph.modules
        if m == "glm.utils" or m.startswith("glm.utils.")
        for imp in graph.find_modules_directly_imported_by(m)
        if imp.startswith("glm.") and not imp.startswith("glm.utils") and imp != "glm.errors"
    )
    assert bad == []


def test_errors_module_imports_nothing_of_glm() -> None:
    graph = _graph()
    assert {m for m in graph.find_modules_directly_imported_by("glm.errors") if m.startswith("glm")} == set()


def _function_level_glm_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glm"):
                found.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno} {node.module}")
            elif isinstance(node, ast.Import):
                found += [
                    f"{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("glm")
                ]
    return found


def test_function_level_glm_imports_only_where_allowed() -> None:
    found = [hit for path in sorted(PACKAGE_DIR.rglob("*.py")) for hit in _function_level_glm_imports(path)]
    allowed = {hit for hit in found if hit.split(" ")[0].split(":")[0] in FUNCTION_IMPORT_ALLOWED}
    assert sorted(set(found) - allowed) == []


# Modules that may import a glm module inside a function, with why.
FUNCTION_IMPORT_ALLOWED: dict[str, str] = {}


def test_scripts_outside_the_package_import_existing_names() -> None:
    """bench/ and recipes/ are not imported by the tests; their `from glm... import name` lines must still
    name things that exist (a moved function would otherwise break them silently)."""
    root = PACKAGE_DIR.parent
    broken = []
    for path in sorted([*root.glob("bench/*.py"), *root.glob("recipes/**/*.py"), root / "run.py"]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glm"):
                module = importlib.import_module(node.module)
                broken += [
                    f"{path.relative_to(root)}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if not hasattr(module, a.name)
                    and importlib.util.find_spec(f"{node.module}.{a.name}") is None
                ]
    assert broken == []
