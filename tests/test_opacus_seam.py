"""Opacus's non-public names: listed in one module (client/privacy/dp_optimizer.py), present in the installed
Opacus, and touched nowhere else. A newer Opacus that renames one fails here, not inside a node's DP step."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from client.privacy import dp_optimizer

REPO = Path(__file__).resolve().parents[1]
SEAM = Path("client/privacy/dp_optimizer.py")
PRODUCT = ("client", "server", "shared_models", "simulations")


def source_files() -> list[Path]:
    return sorted(p for top in PRODUCT for p in (REPO / top).rglob("*.py"))


@pytest.mark.parametrize("module, name", dp_optimizer.PRIVATE_NAMES)
def test_each_private_name_exists_in_the_installed_opacus(module, name):
    assert callable(getattr(importlib.import_module(module), name))


def test_each_private_member_exists_on_opacus_own_objects():
    """The members are read from real objects of a real ``make_private``, as a node builds them."""
    model = torch.nn.Linear(3, 2)
    loader = DataLoader(TensorDataset(torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), batch_size=4)
    private_model, optimizer, _ = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0)
    objects = {"DPOptimizer": optimizer, "GradSampleModule": private_model}
    for module, cls, member in dp_optimizer.PRIVATE_MEMBERS:
        assert isinstance(objects[cls], getattr(importlib.import_module(module), cls))
        assert hasattr(objects[cls], member), f"{cls}.{member}"
    assert dp_optimizer.trained_module(private_model) is model
    optional = {"_adjusted_noise_multiplier"}
    assert set(dp_optimizer.OPTIONAL_MEMBERS) == optional  # read with getattr(..., default) only


def opacus_private_uses(tree: ast.AST, members: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every ``_name`` imported from opacus and every listed member touched as an attribute."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "opacus":
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if a.name.startswith("_") or any(p.startswith("_") for p in node.module.split("."))]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] == "opacus" and any(p.startswith("_") for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and node.attr in members:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and node.value in members:  # getattr(obj, "_name")
            found.append((node.lineno, node.value))
    return found


def test_no_module_but_the_seam_touches_a_private_opacus_name():
    members = {m for *_, m in dp_optimizer.PRIVATE_MEMBERS} | set(dp_optimizer.OPTIONAL_MEMBERS)
    problems = [f"{path.relative_to(REPO)}:{line} touches Opacus's non-public {name} (only in {SEAM})"
                for path in source_files() if path.relative_to(REPO) != SEAM
                for line, name in opacus_private_uses(ast.parse(path.read_text()), members)]
    assert problems == [], "\n".join(problems)


def test_the_seam_lists_every_private_name_it_uses():
    members = {m for *_, m in dp_optimizer.PRIVATE_MEMBERS} | set(dp_optimizer.OPTIONAL_MEMBERS)
    tree = ast.parse((REPO / SEAM).read_text())
    imported = {name for _, name in opacus_private_uses(tree, set()) if "." in name}
    assert imported == {f"{m}.{n}" for m, n in dp_optimizer.PRIVATE_NAMES}
    used = {name for _, name in opacus_private_uses(tree, members)} - imported
    assert used == members
