"""The ``fedemo`` root: every command mounted, its code next to the people who use it, listed once."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

import simulations.cli
from simulations.cli import build_parser

GROUPS = ("data", "credentials")  # commands with subcommands: `fedemo data check`, `fedemo credentials init`


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def mounted_commands() -> list[str]:
    """Every leaf command of the parser, as a user types it (``data check``, ``verify``)."""
    names = []
    for name, sub in _subcommands(build_parser()).items():
        names += [f"{name} {leaf}" for leaf in _subcommands(sub)] if name in GROUPS else [name]
    return names


@pytest.mark.parametrize("argv, module", [
    (["simulate"], "simulations.research_commands"),
    (["baseline"], "simulations.research_commands"),
    (["compare", "run-a", "run-b", "--out", "cmp"], "simulations.research_commands"),
    (["data", "synth", "fer2013", "--out", "data"], "simulations.research_commands"),
    (["data", "check", "data", "--format", "fer2013"], "client.commands"),
    (["ledger", "node-state"], "client.commands"),
    (["credentials", "init", "creds"], "server.commands"),
    (["credentials", "add-hospital", "creds", "hospital-d"], "server.commands"),
    (["verify", "run"], "server.commands"),
    (["report", "run"], "server.commands"),
])
def test_each_command_runs_code_that_lives_with_its_users(argv, module):
    args = build_parser().parse_args(argv)
    assert args.func.__module__ == module


def test_the_parametrised_list_above_covers_every_mounted_command():
    assert sorted(mounted_commands()) == sorted([
        "simulate", "baseline", "compare", "data synth", "data check", "ledger",
        "credentials init", "credentials add-hospital", "verify", "report",
    ])


def test_the_root_docstring_lists_each_command_once():
    listed = []
    for first, second in re.findall(r"^\s+fedemo (\S+)(?: (\S+))?", simulations.cli.__doc__, flags=re.M):
        listed.append(f"{first} {second}" if first in GROUPS else first)
    assert [name for name, count in Counter(listed).items() if count > 1] == []
    assert sorted(listed) == sorted(mounted_commands())


# --- start-up: heavy libraries load inside the command that uses them ----------------------------------------------

HEAVY = ("torch", "opacus", "flwr")


def _modules_loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter and report which heavy libraries it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library():
    assert _modules_loaded_after("import simulations.cli as c; c.build_parser()") == []


def test_fedemo_help_prints_without_importing_torch_opacus_or_flower():
    code = ("import contextlib, io, simulations.cli as c\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit): c.main(['--help'])\n"
            "assert 'simulate' in out.getvalue() and 'verify' in out.getvalue()")
    assert _modules_loaded_after(code) == []


def test_fedemo_verify_reads_a_run_without_importing_torch_opacus_or_flower(tmp_path):
    code = f"import simulations.cli as c; c.main(['verify', {str(tmp_path)!r}])"
    assert _modules_loaded_after(code) == []


def test_python_m_simulations_cli_help_answers():
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage: fedemo" in done.stdout
