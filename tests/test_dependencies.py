"""The declared dependencies are what the package imports: the core install needs only the core list, every other
third-party import is in an extra."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "srft_peft"
#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow"}
#: modules that only optional code imports (each imports its library only when imported itself)
OPTIONAL = ("tracking", "integrations/transformers.py", "integrations/accelerate.py", "integrations/peft.py")


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    third_party = names - set(sys.stdlib_module_names) - {"srft_peft", "__future__"}
    return {DISTRIBUTIONS.get(n, n).lower().replace("_", "-") for n in third_party}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_core_modules_import_only_core_dependencies_at_import_time():
    core = _requirement_names(_project()["dependencies"])
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(OPTIONAL):
            continue
        assert _imports(path, top_level_only=True) <= core, (relative, _imports(path, True) - core)


def test_every_import_is_declared_and_every_declaration_is_imported():
    project = _project()
    extras = project["optional-dependencies"]
    assert extras["all"] == [f"srft-peft[{','.join(n for n in extras if n not in ('all', 'dev'))}]"]
    assert extras["dev"][0] == "srft-peft[all]"  # make install / make demo / CI get every extra
    declared = _requirement_names(project["dependencies"]).union(
        *(_requirement_names(reqs) for name, reqs in extras.items() if name not in ("all", "dev")))
    imported = set().union(*(_imports(p, top_level_only=False) for p in PACKAGE.rglob("*.py")))
    assert declared == imported, (declared - imported, imported - declared)
