"""The shape of the code: imports run one way, down the stages of ``sitewatch.imagery``.

Read from the source with :mod:`ast` (nothing is imported): every ``import`` counts, also
one inside a function, except those under ``if TYPE_CHECKING:`` (they never run). See
``docs/architecture.md`` for the stages and why they are cut this way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Import name -> folder, as pyproject.toml's package-dir installs them.
PACKAGES = {"sitewatch.imagery": ROOT / "imagery", "sitewatch.training": ROOT / "training", "sitewatch": ROOT / "sitewatch"}

#: What each stage of ``sitewatch.imagery`` may import besides itself (its own ``__init__`` says so too).
ALLOWED = {
    "errors": set(),
    "scenes": {"errors"},
    "models": {"errors", "scenes"},
    "candidates": {"errors", "scenes"},
    "detect": {"errors", "scenes", "models", "candidates"},
    "review": {"errors", "scenes", "candidates"},
    "synthetic": {"errors", "scenes", "models", "candidates", "detect"},
}


def module_files() -> dict[str, Path]:
    """Every module of the project by its installed dotted name."""
    out: dict[str, Path] = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names ``path`` imports at run time (relative imports resolved against ``module``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".") if is_pkg else module.split(".")[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a name that is a module's attribute maps to the module)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module and name != "sitewatch":
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def stage(module: str) -> str | None:
    """The stage of a ``sitewatch.imagery`` module (``errors`` for the root), else ``None``."""
    if not module.startswith("sitewatch.imagery"):
        return None
    rest = module.removeprefix("sitewatch.imagery").lstrip(".").split(".")
    return rest[0] if rest[0] in ALLOWED else "errors"


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each import that goes up or across the stages, or from imagery into training."""
    bad = []
    for a, targets in graph.items():
        sa = stage(a)
        if sa is None:
            continue
        for b in sorted(targets):
            sb = stage(b)
            if sb is None or (sb != sa and sb not in ALLOWED[sa]):
                bad.append(f"{a} -> {b}")
    return bad


def test_the_graph_sees_every_module_and_real_edges() -> None:
    graph = import_graph()
    assert "sitewatch.imagery.detect.pipeline" in graph
    assert "sitewatch.training.run" in graph
    # a known edge of each kind: down the stages, and training building on imagery
    assert "sitewatch.imagery.scenes.scene" in graph["sitewatch.imagery.detect.pipeline"]
    assert "sitewatch.imagery.scenes.tiling" in graph["sitewatch.training.chips"]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_imports_run_down_the_stages_and_imagery_never_imports_training() -> None:
    assert stage_violations(import_graph()) == []


def test_every_stage_says_what_it_holds_and_may_import() -> None:
    for name, allowed in ALLOWED.items():
        if name == "errors":
            continue
        doc = ast.get_docstring(ast.parse((ROOT / "imagery" / name / "__init__.py").read_text()))
        assert doc, f"imagery/{name}/__init__.py has no docstring"
        for other in sorted(allowed - {"errors"}):
            assert other in doc, f"imagery/{name}/__init__.py does not say it may import {other}"


@pytest.mark.parametrize("edit", ["cycle", "upward", "training"])
def test_the_checks_fail_on_a_bad_import(edit: str, tmp_path: Path) -> None:
    """The checks above can fail: add one bad edge to the real graph and each is caught."""
    graph = {k: set(v) for k, v in import_graph().items()}
    if edit == "cycle":  # the scene reader importing the detect pipeline, which imports it
        graph["sitewatch.imagery.scenes.scene"].add("sitewatch.imagery.detect.pipeline")
        assert any("sitewatch.imagery.scenes.scene" in c for c in cycles(graph))
    elif edit == "upward":  # the store reaching back into a detect run
        graph["sitewatch.imagery.candidates.store"].add("sitewatch.imagery.detect.report")
        assert stage_violations(graph) == ["sitewatch.imagery.candidates.store -> sitewatch.imagery.detect.report"]
    else:
        graph["sitewatch.imagery.detect.worker"].add("sitewatch.training.train")
        assert stage_violations(graph) == ["sitewatch.imagery.detect.worker -> sitewatch.training.train"]


def test_function_local_and_relative_imports_count(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sitewatch.imagery.detect import pipeline\n"
        "def f():\n    from sitewatch.imagery.candidates.store import CandidateStore\n"
        "from ..scenes import tiling\n"
    )
    names = imported_names(src, "sitewatch.imagery.detect.m")
    assert "sitewatch.imagery.candidates.store.CandidateStore" in names
    assert "sitewatch.imagery.scenes.tiling" in names
    assert not any("pipeline" in n for n in names)
