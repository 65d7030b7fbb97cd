"""The shape of the package: layers that import only downward, no cycle between packages, small files.

Each module's imports are read with ``ast`` (nothing is imported), including imports inside functions,
since a lazy import is still a dependency. Imports under ``if TYPE_CHECKING:`` are left out: they name a type
for the reader and the type checker and never run (the remedies' builders are typed with the composed
``TrainConfig`` that config.py builds from their own settings). A module belongs to the package named by its first component
under ``sftlab`` (``sftlab.audit.report.html`` is in ``audit``); a top-level module is its own package
(``config``, ``cli``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sftlab"

# Bottom first. A package may import its own layer's packages and any layer below, never one above.
LAYERS: list[set[str]] = [
    {"sftlab", "errors", "offline", "settings"},  # the package root (version), the error type, the offline switch,
    # the base of every config section (settings.py: StrictModel, shared sections; pydantic only)
    {"models"},  # ground floor: loading, built-ins, GGUF, generation, fingerprint, cache root, token constants
    {"data"},
    {"train"},
    {"config"},  # typed configs, composed from each remedy's settings (train/remedies), so above train
    {"audit"},  # the audit never trusts the trainer, but may share a formula kept in train/
    {"world"},  # the synthetic world and its judge, a measure over audit's pieces
    {"recipes"},  # what users run: train, audit, sweep, demo
    {"integrations"},  # other people's loops calling sftlab's recipes (AuditCallback)
    {"cli"},
]
MAX_LINES = 500
# Files still over MAX_LINES on this branch because another helper of the same step is splitting them
# (measures: recipes/audit.py and audit/report/sections.py). The lead empties this list once those branches
# are merged.
KNOWN_LONG_FILES_BEING_SPLIT = {
    "recipes/audit.py",
    "audit/report/sections.py",
    # Not being split by anyone in this step (found over the limit when this test was written); the lead
    # decides who splits them.
    "train/trainer.py",
    "data/readers.py",
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = ["sftlab", *path.relative_to(src).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(path: Path, src: Path = SRC) -> set[str]:
    """Every ``sftlab`` module that ``path`` imports, relative imports resolved."""
    known = {module_name(p, src) for p in src.rglob("*.py")}
    here = module_name(path, src).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    type_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                 for stmt in node.body for inner in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            # ``from sftlab import errors`` imports the module sftlab.errors, not only the package root.
            submodules = {f"{target}.{alias.name}" for alias in node.names}
            found.update(submodules & known or {target})
    return {name for name in found if name == "sftlab" or name.startswith("sftlab.")}


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def package_imports(src: Path) -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the ``module -> module`` lines that make that edge."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(src.rglob("*.py")):
        source = module_name(path, src)
        for target in imported_modules(path, src):
            if package_of(source) != package_of(target):
                edges[package_of(source)][package_of(target)].append(f"{source} -> {target}")
    return edges


def layer_index(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"package {package!r} is in no layer: place it in LAYERS")


def upward_imports(edges: dict[str, dict[str, list[str]]]) -> list[str]:
    return [line for source, targets in edges.items() for target, lines in targets.items()
            if layer_index(target) > layer_index(source) for line in lines]


def package_cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Each strongly connected set of two or more packages (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    for node in sorted(set(edges) | {t for targets in edges.values() for t in targets}):
        if node not in index:
            visit(node)
    return cycles


def test_every_package_has_a_layer():
    for path in SRC.rglob("*.py"):
        layer_index(package_of(module_name(path)))


def test_no_import_runs_back_up_the_layers():
    upward = upward_imports(package_imports(SRC))
    assert not upward, "imports that run back up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_packages():
    cycles = package_cycles(package_imports(SRC))
    assert not cycles, f"packages that import each other in a circle: {cycles}"


def test_no_source_file_is_over_the_line_limit():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    unexpected = {path: n for path, n in long.items() if path not in KNOWN_LONG_FILES_BEING_SPLIT}
    assert not unexpected, f"files over {MAX_LINES} lines: {unexpected}"


def test_the_known_long_files_still_exist_and_are_still_long():
    """An exception that is no longer needed is removed from the list, so the list cannot rot."""
    for rel in KNOWN_LONG_FILES_BEING_SPLIT:
        path = SRC / rel
        if path.is_file() and len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES:
            pytest.fail(f"{rel} is within {MAX_LINES} lines now: drop it from KNOWN_LONG_FILES_BEING_SPLIT")


# The checks themselves, on a small tree written here, so that each can be seen to fail.

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "sftlab"
    for rel, text in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def test_the_checks_catch_an_upward_import_a_lazy_one_and_a_cycle(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "",
        "models/gen.py": "def f():\n    from sftlab.data import tokenize\n",  # lazy, and upward
        "data/__init__.py": "",
        "data/tokenize.py": "from ..models import gen\n",  # relative, downward
        "data/hints.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sftlab.train import x\n",
    })
    edges = package_imports(src)
    assert upward_imports(edges) == ["sftlab.models.gen -> sftlab.data.tokenize"]
    assert package_cycles(edges) == [["data", "models"]]


def test_the_checks_pass_a_tree_that_only_imports_downward(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "from sftlab.errors import UserError\n",
        "errors.py": "",
        "recipes/__init__.py": "import sftlab.models\nfrom sftlab import errors\n",
    })
    edges = package_imports(src)
    assert upward_imports(edges) == [] and package_cycles(edges) == []
    assert set(edges["recipes"]) == {"models", "errors"}  # `from sftlab import errors` is the module errors
