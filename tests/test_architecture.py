"""One owner for SRFT's state: the package's modules import each other without cycles, and only `SRFTModel` (model.py)
and the regularizer reach its engine (`_engine`); everything else uses public methods or engine-level functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "srft_peft"
#: Where ``._engine`` may be read: the owner and the engine's own package.
ENGINE_OWNERS = ("srft_peft/model.py", "srft_peft/regularizer/")
#: Checked for ``._engine``: the package, the tests and the benchmarks.
SCANNED = ("srft_peft", "tests", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement: at module level, inside functions (deferred) and under ``if TYPE_CHECKING:`` (a
    dependency for the type checker and the reader even if it never runs)."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports. ``from X import name`` counts as importing ``X.name`` when that is a
    module, else ``X`` (its ``__init__``); a module's parent packages are not counted (they import their children)."""
    paths = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in imports_of(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in paths else origin for a in node.names]
            edges |= {t for t in targets if t in paths and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert {"srft_peft.model", "srft_peft.checkpoint", "srft_peft.forwarding"} <= graph.keys()
    assert "srft_peft.checkpoint" in graph["srft_peft.model"]  # the owner uses the engine-level functions
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_find_cycle_reports_a_cycle_through_a_deferred_or_type_checking_import(tmp_path: Path) -> None:
    """The checker itself: a cycle closed by an import inside a function (as model.attach once did) or under
    ``if TYPE_CHECKING:`` (as checkpoint.py's engine import once did) is found; a package without one passes."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    return 1\n")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert find_cycle(import_graph(pkg)) == []
        (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n"
                                  "def f():\n    return 1\n")
        assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]
        (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
        assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]
    finally:
        ROOT = root


def engine_accesses(path: Path) -> list[int]:
    """Lines of ``<expr>._engine`` in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sorted(n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "_engine")


@pytest.mark.parametrize("folder", SCANNED)
def test_only_the_owner_reaches_the_engine(folder: str) -> None:
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(ENGINE_OWNERS):
            continue
        lines = engine_accesses(path)
        if lines:
            found[rel] = lines
    assert found == {}, f"._engine used outside {ENGINE_OWNERS}: {found}"


def test_the_engine_state_keys_are_named_in_one_module() -> None:
    """The keys of ``SRFTEngine.state_dict()`` are string constants of ``regularizer/state.py`` only: the engine and
    everything else use those names, so a key cannot drift between a writer and its validator."""
    from srft_peft.regularizer import state

    keys = {state.V, state.RANK_CODES, state.RANK_M, state.ANCHOR}
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "state.py" and path.parent.name == "regularizer":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in keys]
        if lines:
            found[path.relative_to(ROOT).as_posix()] = lines
    assert found == {}, f"engine state keys spelled outside srft_peft/regularizer/state.py: {found}"
