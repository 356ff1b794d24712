"""Flower's internals are reached through one module per seam, and each private use is checked against Flower.

The seams: simulations/engine/flower_seam.py (the simulation engine and the
Backend interface), server/privacy/flower_dp_seam.py (the DP strategy
wrappers we subclass), server/aggregation/flower_strategy_seam.py (FedAvgM's
momentum, checkpointed) and client/tools/flower_control_seam.py (the
SuperLink's Control API). Each lists what it uses that is not Flower's public API
(``PRIVATE_NAMES``, ``PRIVATE_CALLS``, ``PRIVATE_ATTRIBUTES``; the DP seam
also ``OVERRIDES`` and ``REPLICATED``). These tests check every entry against
the installed Flower, check that the lists are complete, and scan the rest of
the code so that a private use outside a seam fails here, not in a run after
a Flower upgrade.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEAMS = {"simulations/engine/flower_seam.py": "simulations.engine.flower_seam",
         "server/privacy/flower_dp_seam.py": "server.privacy.flower_dp_seam",
         "server/aggregation/flower_strategy_seam.py": "server.aggregation.flower_strategy_seam",
         "client/tools/flower_control_seam.py": "client.tools.flower_control_seam"}
PRODUCT_AND_RESEARCH = ("client", "server", "shared_models", "simulations")
# Flower's documented API: names imported from these modules need no seam.
PUBLIC = {"flwr", "flwr.app", "flwr.clientapp", "flwr.clientapp.mod", "flwr.serverapp", "flwr.serverapp.strategy",
          "flwr.simulation", "flwr.common", "flwr.client", "flwr.client.mod", "flwr.server", "flwr.server.strategy",
          "flwr.server.workflow"}
# Non-public modules used outside the seams today (logging, config parsing, SecAgg+'s legacy records): each
# (module, name) is listed, so a NEW non-public name outside a seam fails test_no_private_flower_use_outside_the_seams.
OUTSIDE_SEAMS = {
    ("flwr.common.logger", "log"), ("flwr.supercore.logger", "FLOWER_LOGGER"),
    ("flwr.supercore.logger", "console_handler"),
    ("flwr.common.config", "flatten_dict"), ("flwr.common.config", "parse_config_args"),
    ("flwr.common.config", "get_project_config"), ("flwr.common.config", "fuse_dicts"),
    ("flwr.common.config", "get_fused_config_from_dir"), ("flwr.serverapp.strategy.strategy_utils", "sample_nodes"),
    ("flwr.compat.common", "recorddict_compat"), ("flwr.server.workflow.constant", "MAIN_CONFIGS_RECORD"),
    ("flwr.server.workflow.constant", "MAIN_PARAMS_RECORD"), ("flwr.server.workflow.constant", "Key"),
}


def seam(module: str):
    return importlib.import_module(module)


def resolve(module: str, name: str):
    target = importlib.import_module(module)
    for part in name.split("."):  # a function, a class, or a class's member
        target = getattr(target, part)
    return target


def entries(kind: str) -> list[tuple]:
    return [(module, *entry) for module in SEAMS.values() for entry in getattr(seam(module), kind, [])]


def flower_imports(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(module, name, line) of every ``from flwr... import name`` and ``import flwr...``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "flwr":
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name.split(".")[0] == "flwr"]
    return found


def source_files(outside_seams: bool = True) -> list[Path]:
    files = [p for folder in PRODUCT_AND_RESEARCH for p in sorted((REPO / folder).rglob("*.py"))]
    return [p for p in files if not outside_seams or str(p.relative_to(REPO)) not in SEAMS]


@functools.cache
def flower_private_members() -> set[str]:
    """Every ``_name`` (not dunder) of the Flower classes and modules the code imports."""
    members: set[str] = set()
    for path in source_files(outside_seams=False):
        for module, name, _ in flower_imports(ast.parse(path.read_text())):
            targets = [importlib.import_module(module)]
            if name and hasattr(targets[0], name):
                targets.append(getattr(targets[0], name))
            for target in targets:
                classes = [c for c in inspect.getmro(target) if c.__module__.startswith("flwr")] \
                    if inspect.isclass(target) else [target] if inspect.ismodule(target) else []
                for owner in classes:
                    members |= {k for k in vars(owner) if k.startswith("_") and not k.startswith("__")}
    return members


@pytest.mark.parametrize("module, flower_module, name", entries("PRIVATE_NAMES"),
                         ids=[f"{m.rsplit('.', 1)[1]}:{n}" for m, _, n in entries("PRIVATE_NAMES")])
def test_every_private_name_still_imports(module, flower_module, name):
    resolve(flower_module, name)


@pytest.mark.parametrize("module, flower_module, name, parameters", entries("PRIVATE_CALLS"),
                         ids=[f"{m.rsplit('.', 1)[1]}:{n}" for m, _, n, _ in entries("PRIVATE_CALLS")])
def test_every_private_call_still_takes_our_arguments(module, flower_module, name, parameters):
    """A Flower upgrade that moves or reshapes one of these fails here, not in a researcher's run."""
    accepted = inspect.signature(resolve(flower_module, name)).parameters
    assert [p for p in parameters if p not in accepted] == [], f"{flower_module}.{name}{tuple(accepted)}"


@functools.cache
def flower_objects() -> dict[tuple[str, str], object]:
    """One real instance of each Flower class whose per-instance state a seam reads or writes."""
    from flwr.serverapp.strategy import (DifferentialPrivacyClientSideAdaptiveClipping,
                                         DifferentialPrivacyClientSideFixedClipping,
                                         DifferentialPrivacyServerSideAdaptiveClipping,
                                         DifferentialPrivacyServerSideFixedClipping, FedAvg, FedAvgM)

    from simulations.engine import flower_seam as engine

    factory = engine.LinkStateFactory(engine.FLWR_IN_MEMORY_DB_NAME, engine.NoOpFederationManager(),
                                      engine.ObjectStoreFactory())
    fixed, adaptive = "flwr.serverapp.strategy.dp_fixed_clipping", "flwr.serverapp.strategy.dp_adaptive_clipping"
    linkstate = "flwr.server.superlink.linkstate"
    return {
        (linkstate, "LinkStateFactory"): factory,
        (f"{linkstate}.in_memory_linkstate", "InMemoryLinkState"): factory.state(),
        ("flwr.supercore.run", "Run"): engine.Run.create_empty(run_id=1),
        (fixed, "DifferentialPrivacyServerSideFixedClipping"):
            DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 1.0, 2),
        (fixed, "DifferentialPrivacyClientSideFixedClipping"):
            DifferentialPrivacyClientSideFixedClipping(FedAvg(), 1.0, 1.0, 2),
        (adaptive, "DifferentialPrivacyServerSideAdaptiveClipping"):
            DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(), 1.0, 2, clipped_count_stddev=1.0),
        (adaptive, "DifferentialPrivacyClientSideAdaptiveClipping"):
            DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(), 1.0, 2, clipped_count_stddev=1.0),
        ("flwr.serverapp.strategy.fedavg", "FedAvg"): FedAvg(),
        ("flwr.serverapp.strategy.fedavgm", "FedAvgM"): FedAvgM(),
        ("flwr.proto.control_pb2", "ListNodesResponse"): resolve("flwr.proto.control_pb2", "ListNodesResponse")(),
        ("flwr.proto.node_pb2", "NodeInfo"): resolve("flwr.proto.node_pb2", "NodeInfo")(),
    }


@pytest.mark.parametrize("module, flower_module, cls, attribute", entries("PRIVATE_ATTRIBUTES"),
                         ids=[f"{c}.{a}" for _, _, c, a in entries("PRIVATE_ATTRIBUTES")])
def test_every_flower_attribute_a_seam_reads_or_writes_exists(module, flower_module, cls, attribute):
    """Checked on a real instance (the class itself for class-level state: TaskIdentity, enums, methods)."""
    owner = flower_objects().get((flower_module, cls), resolve(flower_module, cls))
    try:
        inspect.getattr_static(owner, attribute)  # a property that raises while unset still exists
    except AttributeError:
        assert hasattr(owner, attribute), f"{flower_module}.{cls} has no {attribute}"


@pytest.mark.parametrize("flower_module, name, parameters, callers",
                         [e[1:] for e in entries("OVERRIDES")], ids=[e[2] for e in entries("OVERRIDES")])
def test_every_overridden_flower_method_keeps_its_signature_and_its_callers(flower_module, name, parameters,
                                                                            callers):
    """central_dp's overrides only take effect while Flower's method exists, as we define it, and is still called."""
    from server.privacy import flower_dp_seam

    flower_method = resolve(flower_module, name)
    assert list(inspect.signature(flower_method).parameters) == parameters
    method = name.rsplit(".", 1)[1]
    overriding = [cls for cls in flower_dp_seam.WRAPPERS.values() if method in
                  {k for c in inspect.getmro(cls) if not c.__module__.startswith("flwr") for k in vars(c)}]
    assert overriding, f"no wrapper overrides {method}"
    for cls in overriding:
        ours = getattr(cls, method)
        assert len(inspect.signature(ours).parameters) == len(parameters), f"{cls.__name__}.{method}"
    for caller in callers:
        assert f"self.{method}(" in inspect.getsource(resolve(flower_module, caller)), f"{caller} no longer calls it"


@pytest.mark.parametrize("flower_module, name, digest", [e[1:] for e in entries("REPLICATED")],
                         ids=[e[2] for e in entries("REPLICATED")])
def test_flower_methods_we_replicate_are_unchanged(flower_module, name, digest):
    """Our server-side aggregate_train repeats Flower 1.41's steps: a changed original must be read again."""
    source = inspect.getsource(resolve(flower_module, name))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, f"{flower_module}.{name} changed"


@pytest.mark.parametrize("path, module", SEAMS.items(), ids=list(SEAMS))
def test_each_seam_lists_every_private_name_it_uses(path, module):
    """The lists are complete: every non-public import and every Flower ``_member`` a seam touches is in them."""
    tree = ast.parse((REPO / path).read_text())
    imported = {(m, n) for m, n, _ in flower_imports(tree) if m not in PUBLIC}
    listed = {(m, n) for m, n in getattr(seam(module), "PRIVATE_NAMES", [])}
    assert sorted(imported - OUTSIDE_SEAMS - listed) == [] and sorted(listed - imported) == []
    registered = {n.rsplit(".", 1)[-1] for kind in ("PRIVATE_CALLS", "OVERRIDES")
                  for _, n, *_ in getattr(seam(module), kind, [])}
    private = flower_private_members()
    touched = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
              {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert sorted(name for name in touched & private if name not in registered) == []


def test_no_private_flower_use_outside_the_seams():
    """Outside the seams: no ``_name`` of Flower imported, accessed or overridden, no seam-owned Flower module,
    no non-public Flower name beyond OUTSIDE_SEAMS, and none of the Flower state the seams list."""
    private = flower_private_members()
    owned = {m for module in SEAMS.values() for m, _ in seam(module).PRIVATE_NAMES}
    state = {a for *_, a in entries("PRIVATE_ATTRIBUTES")} - GENERIC_ATTRIBUTES
    problems = []
    for path in source_files():
        where = path.relative_to(REPO)
        tree = ast.parse(path.read_text())
        own = own_members(tree)
        for module, name, line in flower_imports(tree):
            if name.startswith("_") or any(part.startswith("_") for part in module.split(".")):
                problems.append(f"{where}:{line} imports Flower's private {module}.{name}")
            elif module in owned:
                problems.append(f"{where}:{line} imports {module} (reach it through its seam module)")
            elif module not in PUBLIC and (module, name) not in OUTSIDE_SEAMS:
                problems.append(f"{where}:{line} imports non-public {module}.{name} (add it to a seam)")
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else \
                node.name if isinstance(node, ast.FunctionDef) else None
            if name in private and name not in own:
                problems.append(f"{where}:{node.lineno} touches Flower's private {name} (only in a seam)")
            elif isinstance(node, ast.Attribute) and name in state:
                problems.append(f"{where}:{node.lineno} touches Flower's internal state .{name} (only in a seam)")
    assert problems == [], "\n".join(problems)


def own_members(tree: ast.AST) -> set[str]:
    """Methods of the module's own classes that derive from nothing of Flower's (``GpuSampler._run``)."""
    flower = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module and node.module.split(".")[0] == "flwr" for alias in node.names}
    own = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not any(isinstance(b, ast.Name) and b.id in flower for b in cls.bases):
            own |= {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
    return own


# Attribute names the seams list that are also ordinary words of our own objects (a run record's run_id, a
# node's name, a settings' strategy ...): the scan above cannot tell them from Flower's, the checks above still hold.
GENERIC_ATTRIBUTES = {"lock", "run_id", "node_id", "task_id", "strategy", "name", "status", "noise_multiplier",
                      "accountant", "ListNodes", "public_key", "owner_name", "nodes_info"}


def test_the_scan_finds_a_private_use():
    """The fence can fail: a module outside the seams that reaches into Flower's link state is reported."""
    private = flower_private_members()
    sample = ast.parse("from flwr.simulation.run_simulation import _run_simulation\n"
                       "state._check_stored_messages(ids)\nstrategy._noisy_fraction(1, 2)\n")
    assert {"_check_stored_messages", "_noisy_fraction"} <= {n.attr for n in ast.walk(sample)
                                                            if isinstance(n, ast.Attribute)} & private
    assert [n for _, n, _ in flower_imports(sample)] == ["_run_simulation"]


def upstream_reproductions() -> tuple[str, list[tuple[str, str]]]:
    """docs/upstream.md's setup block, and each section's title with its reproduction."""
    import re

    text = (REPO / "docs" / "upstream.md").read_text()
    setup = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    sections = re.findall(r"^## (.+?)\n.*?```python\n(.*?)```", text[text.index("\n## "):], re.S | re.M)
    return setup, sections


@pytest.mark.slow
@pytest.mark.parametrize("title, code", upstream_reproductions()[1], ids=[t for t, _ in upstream_reproductions()[1]])
def test_each_upstream_reproduction_still_shows_the_bug_in_the_installed_flower(title, code, tmp_path):
    """Each block asserts the bug; once Flower fixes one, this fails and its workaround can be retired."""
    import subprocess
    import sys

    setup, _ = upstream_reproductions()
    ran = subprocess.run([sys.executable, "-c", setup + "\n" + code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
