"""The ``fedemo`` root: every command mounted, its code next to the people who use it, listed once."""

from __future__ import annotations

import argparse
import re
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
