"""docs/configuration.md lists what ships: every file in configs/ and every run-config key, by settings section.

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


def key_table_problems(repo: Path = REPO) -> list[str]:
    """Every disagreement between the three lists of run-config keys, one line each, saying where to fix it.

    The lists: pyproject.toml's [tool.flwr.app.config] (the defaults), RunSettings' fields (one dataclass per
    section, shared_models/settings/<section>.py, composed through SECTIONS) and docs/configuration.md's
    key tables, one per section under a '### <title> (`shared_models/settings/<section>.py`)' heading.
    """
    from shared_models.settings.run_settings import SECTIONS

    pyproject = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    defaults = set(pyproject["tool"]["flwr"]["app"]["config"])
    section_of = {}  # key -> settings module that declares it
    for section in SECTIONS:
        module = "shared_models/settings/" + section.__module__.rsplit(".", 1)[1] + ".py"
        for name in section.__annotations__:
            section_of[name.replace("_", "-")] = module
    text = (repo / "docs" / "configuration.md").read_text(encoding="utf-8")
    tables = text[:text.index("\n## ")]  # the key tables come before the page's first '## ' section
    documented: dict[str, list[str]] = {}  # key -> the settings module each of its rows sits under
    heading, headings = None, set()
    for line in tables.splitlines():
        match = re.match(r"^### .*\(`(shared_models/settings/\w+\.py)`\)$", line)
        if match:
            heading = match.group(1)
            headings.add(heading)
        row = re.match(r"^\| `([^`]+)` \|", line)
        if row and row.group(1) != "key":
            documented.setdefault(row.group(1), []).append(heading or "no heading")
    problems = []
    for module in sorted(set(section_of.values()) - headings):
        problems.append(f"docs/configuration.md has no '### <title> (`{module}`)' table for that section's keys")
    for key in sorted(defaults | set(section_of) | set(documented)):
        where = f"'{key}'" + (f" ({section_of[key]})" if key in section_of else "")
        if key not in defaults:
            problems.append(f"{where}: no default in pyproject.toml's [tool.flwr.app.config]")
        if key not in section_of:
            problems.append(f"{where}: no field in RunSettings (add it to a section in shared_models/settings/, "
                            f"a section module to SECTIONS in run_settings.py)")
        if key not in documented:
            problems.append(f"{where}: no row in docs/configuration.md"
                            + (f" (add it under the `{section_of[key]}` heading)" if key in section_of else ""))
        elif len(documented[key]) > 1:
            problems.append(f"{where}: {len(documented[key])} rows in docs/configuration.md")
        elif key in section_of and documented[key][0] != section_of[key]:
            problems.append(f"{where}: its row in docs/configuration.md is under `{documented[key][0]}`, "
                            f"not its section's heading")
    return problems


def test_the_docs_the_defaults_and_the_settings_list_the_same_keys_by_section():
    problems = key_table_problems()
    assert not problems, "run-config keys out of step:\n" + "\n".join(problems)


def test_a_key_missing_anywhere_is_named_with_where_to_add_it(tmp_path):
    """The check on a copy of the page and pyproject with one key dropped from each and one row moved."""
    (tmp_path / "docs").mkdir()
    page = PAGE.read_text(encoding="utf-8")
    page = page.replace(next(line for line in page.splitlines() if line.startswith("| `dp-delta` |")) + "\n", "")
    seed_row = next(line for line in page.splitlines() if line.startswith("| `seed` |"))
    page = page.replace(seed_row + "\n", "").replace("| `dp` |", seed_row + "\n| `dp` |")
    (tmp_path / "docs" / "configuration.md").write_text(page, encoding="utf-8")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(re.sub(r"^run-name = .*\n", "", pyproject, flags=re.M), encoding="utf-8")
    problems = key_table_problems(tmp_path)
    assert "'dp-delta' (shared_models/settings/dp.py): no row in docs/configuration.md (add it under the " \
           "`shared_models/settings/dp.py` heading)" in problems
    assert "'run-name' (shared_models/settings/output.py): no default in pyproject.toml's " \
           "[tool.flwr.app.config]" in problems
    assert "'seed' (shared_models/settings/data.py): its row in docs/configuration.md is under " \
           "`shared_models/settings/dp.py`, not its section's heading" in problems


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
