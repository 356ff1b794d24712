"""docs/configuration.md lists what ships: every file in configs/ and every run-config key.

A user learns the keys and the shipped configs from that page; a key or a
config added without a row there is invisible to them. Both tables are read
against the live sources (pyproject.toml's [tool.flwr.app.config] and the
configs/ folder), so a new key or config fails here until it is documented,
and a row left behind for something removed fails too.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"


def _section(title: str) -> str:
    """The text of one '## title' section of the page."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/configuration.md has no '## {title}' section"
    return match.group(1)


def _first_cells(table_text: str) -> list[str]:
    """The backquoted first cell of every table row."""
    return re.findall(r"^\| `([^`]+)` \|", table_text, flags=re.M)


def test_the_key_table_lists_every_run_config_key_once():
    keys = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    text = PAGE.read_text(encoding="utf-8")
    table = text[:text.index("\n## ")]  # the key table comes before the page's first section
    rows = _first_cells(table)
    assert sorted(set(keys) - set(rows)) == [], "keys in pyproject.toml without a row in docs/configuration.md"
    assert sorted(set(rows) - set(keys)) == [], "rows in docs/configuration.md for keys pyproject.toml lacks"
    assert len(rows) == len(set(rows)), "a key has two rows"


def test_the_configs_table_lists_every_shipped_config():
    shipped = sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*.toml"))
    rows = _first_cells(_section("The shipped configs"))
    assert sorted(set(shipped) - set(rows)) == [], "configs without a row in docs/configuration.md"
    assert sorted(set(rows) - set(shipped)) == [], "rows for configs that do not exist"


def test_the_configs_table_states_each_configs_own_rounds_and_clients():
    """A row's 'N clients, M rounds' must be the file's own num-supernodes and num-server-rounds."""
    defaults = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    text = _section("The shipped configs")
    for line in text.splitlines():
        match = re.match(r"^\| `(configs/[^`]+)` \| (.*) \|$", line)
        if not match:
            continue
        config = {**defaults, **tomllib.loads((REPO / match.group(1)).read_text(encoding="utf-8"))}
        rounds = re.search(r"(\d+) rounds", match.group(2))
        if rounds:
            assert int(rounds.group(1)) == config["num-server-rounds"], line
        clients = re.search(r"(\d+) clients", match.group(2))
        if clients:
            assert int(clients.group(1)) == config["num-supernodes"], line


def test_the_model_row_names_every_model_the_registry_builds():
    from shared_models.models.registry import MODELS

    row = next(line for line in PAGE.read_text(encoding="utf-8").splitlines() if line.startswith("| `model` |"))
    named = set(re.findall(r"`([a-z_]+)`", row.split("|")[3]))
    assert sorted(set(MODELS) - named) == [], row


def test_the_readme_says_how_long_the_tests_take_and_how_to_skip_the_slow_ones():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert 'pytest -m "not slow"' in readme
    assert re.search(r"takes\s+\d+ to \d+ minutes", readme)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(m.startswith("slow:") for m in pyproject["tool"]["pytest"]["ini_options"]["markers"])
