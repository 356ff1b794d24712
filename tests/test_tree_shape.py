"""The tree stays readable: no product or simulations module over 400 lines, no module docstring over 12.

Small modules with one job; a docstring says what and why in a few lines (figures and long method notes
live in docs/ and in benchmarks' output, where they can be kept current).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("client", "server", "shared_models", "simulations")
MAX_LINES = 400
MAX_DOCSTRING_LINES = 12
# The root command's docstring is the command index (tests/test_cli.py checks it lists every mounted command).
DOCSTRING_EXEMPT = {"simulations/cli.py"}


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def docstring_lines(path: Path) -> int:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
    return len(doc.strip("\n").splitlines()) if doc else 0


def test_the_packages_hold_modules():
    assert len(modules()) > 50  # the walk found the tree (a wrong ROOT would pass everything below)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by job (lines): {long}"


def test_no_module_docstring_is_over_12_lines():
    long = {rel: n for p in modules() if (rel := p.relative_to(ROOT).as_posix()) not in DOCSTRING_EXEMPT
            and (n := docstring_lines(p)) > MAX_DOCSTRING_LINES}
    assert not long, f"say what and why in a few lines; move figures and method notes to docs/ (lines): {long}"
