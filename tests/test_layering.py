"""The dependency rule between FedEmo's four packages, read from the code itself.

    simulations/                 research tooling: may import everything below
    client/      server/         the hospital node and the coordinator, side by side
    shared_models/               what both sides share: imports nothing of ours above it

``client`` and ``server`` never import each other (a hospital installs no
coordinator code and the other way round), product code never imports
``simulations``, and no module imports itself round a cycle. Every import
counts, including those inside functions: a lazy import is still a
dependency, only a later one.

The checker reads source with ``ast`` and imports nothing, so it also runs on
an old checkout (``check_tree(path)``) to show what a change fixed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# what each package may import from ours (the Python standard library and third parties are free)
ALLOWED: dict[str, frozenset[str]] = {
    "shared_models": frozenset({"shared_models"}),
    "client": frozenset({"client", "shared_models"}),
    "server": frozenset({"server", "shared_models"}),
    "simulations": frozenset({"simulations", "client", "server", "shared_models"}),
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as the importing module names it."""

    module: str  # importing module, dotted
    path: str  # its file, relative to the repo root
    line: int
    target: str  # the module it imports (the most specific of ours it names)


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the four packages under ``root``, by dotted name."""
    modules: dict[str, Path] = {}
    for package in ALLOWED:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(target: str, modules: dict[str, Path]) -> str:
    """The most specific module of ours that ``target`` names (``a.b.func`` -> ``a.b``)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return target


def imports_of(module: str, path: Path, root: Path, modules: dict[str, Path]) -> list[Import]:
    """All imports in one file, at any depth (module level, functions, ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(root))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name` imports the submodule pkg.name when there is one
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            imp = Import(module, rel, node.lineno, resolved)
            if resolved.split(".")[0] in ALLOWED and imp not in found:  # `from a import x, y`: one import of a
                found.append(imp)
    return found


def layer_violations(imports: list[Import]) -> list[str]:
    """Each import that crosses the rule, naming file, line and what it imports."""
    problems = []
    for imp in imports:
        own, other = imp.module.split(".")[0], imp.target.split(".")[0]
        if other not in ALLOWED[own]:
            problems.append(f"{imp.path}:{imp.line}: {imp.module} imports {imp.target} "
                            f"({own} may import only {', '.join(sorted(ALLOWED[own]))})")
    return problems


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Each strongly connected group of modules (two or more, or one importing itself), as a cycle path."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.module, set()).add(imp.target)
        graph.setdefault(imp.target, set())

    # Tarjan's strongly connected components, iteratively (no recursion limit on big graphs)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                if len(component) > 1 or node in graph[node]:
                    components.append(_cycle_through(sorted(component), graph))
    return components


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle inside a strongly connected component: a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    # breadth-first from start back to start, inside the component
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:  # walk back from node to start, then close the loop
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def check_tree(root: Path) -> list[str]:
    """Every rule broken under ``root``: layer violations, then cycles (empty when the layering holds)."""
    modules = module_files(root)
    imports = [imp for module, path in modules.items() for imp in imports_of(module, path, root, modules)]
    problems = layer_violations(imports)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in import_cycles(imports)]
    return problems


def test_the_repository_keeps_the_dependency_rule():
    problems = check_tree(REPO_ROOT)
    assert not problems, "the layering is broken:\n  " + "\n  ".join(problems)


# --- the checker itself, on small made-up trees ------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for package in ALLOWED:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root


def test_a_clean_tree_passes(tmp_path):
    root = _tree(tmp_path, {
        "shared_models/a.py": "import json\n",
        "client/b.py": "from shared_models import a\n",
        "server/c.py": "from shared_models.a import thing\n",
        "simulations/d.py": "import client.b\nimport server.c\n",
    })
    assert check_tree(root) == []


@pytest.mark.parametrize("path, source, line, target", [
    ("shared_models/a.py", "import os\nfrom client.b import x\n", 2, "client.b"),
    ("client/b.py", "from server import c\n", 1, "server.c"),
    ("server/c.py", "def f():\n    import simulations.d\n", 2, "simulations.d"),  # inside a function
    ("client/loaders/e.py", "from ...simulations.d import y\n", 1, "simulations.d"),  # relative
])
def test_each_crossing_import_is_named_with_file_line_and_target(tmp_path, path, source, line, target):
    files = {"shared_models/a.py": "", "client/b.py": "", "server/c.py": "", "simulations/d.py": "",
             "client/data/loaders/__init__.py": ""}
    root = _tree(tmp_path, {**files, path: source})
    problems = check_tree(root)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{line}: ") and f"imports {target} " in problems[0]


def test_a_cycle_is_named_even_through_a_lazy_import(tmp_path):
    root = _tree(tmp_path, {
        "shared_models/a.py": "from shared_models import b\n",
        "shared_models/b.py": "def f():\n    from shared_models.c import g\n",
        "shared_models/c.py": "import shared_models.a\n",
        "shared_models/d.py": "import shared_models.a\n",  # depends on the cycle, is not in it
    })
    assert check_tree(root) == ["import cycle: shared_models.a -> shared_models.b -> shared_models.c -> shared_models.a"]
