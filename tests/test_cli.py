"""The ``fedemo`` root: every command mounted, its code next to the people who use it, listed once."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import simulations.cli
from simulations.cli import build_parser

GROUPS = ("data", "credentials", "node")  # commands with subcommands: `fedemo data check`, `fedemo node sent`


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
    (["evaluate", "run"], "simulations.research_commands"),
    (["plot", "run-a", "run-b"], "simulations.research_commands"),
    (["data", "synth", "fer2013", "--out", "data"], "simulations.research_commands"),
    (["data", "check", "data", "--format", "fer2013"], "client.tools.commands"),
    (["ledger", "node-state"], "client.tools.commands"),
    (["node", "check", "--superlink", "localhost:8000", "--root-certificates", "ca.crt"], "client.tools.commands"),
    (["node", "sent", "state"], "client.tools.commands"),
    (["node", "approve", "--node-config", "dataset-id='a'", "--run-config", "run.toml"], "client.tools.commands"),
    (["node", "dry-run", "--node-config", "dataset-id='a'", "--run-config", "run.toml"], "simulations.node_dry_run"),
    (["node", "withdraw", "--state-dir", "state", "--dataset-id", "a", "r1"], "client.tools.withdraw"),
    (["credentials", "init", "creds"], "server.tools.commands"),
    (["credentials", "add-hospital", "creds", "hospital-d"], "server.tools.commands"),
    (["verify", "run"], "server.tools.commands"),
    (["report", "run"], "server.tools.commands"),
    (["predict", "run", "face.png"], "client.inference.commands"),
    (["export", "run", "--format", "onnx", "--int8"], "simulations.export_command"),
    (["audit", "configs/quickstart_dp.toml"], "simulations.audit.command"),
])
def test_each_command_runs_code_that_lives_with_its_users(argv, module):
    args = build_parser().parse_args(argv)
    assert args.func.__module__ == module


def test_the_parametrised_list_above_covers_every_mounted_command():
    assert sorted(mounted_commands()) == sorted([
        "simulate", "baseline", "evaluate", "compare", "plot", "data synth", "data check", "ledger", "node check",
        "node sent", "node approve", "node dry-run", "node withdraw",
        "credentials init", "credentials add-hospital", "verify", "report", "predict", "export", "audit",
    ])


def test_the_root_docstring_lists_each_command_once():
    listed = []
    for first, second in re.findall(r"^\s+fedemo (\S+)(?: (\S+))?", simulations.cli.__doc__, flags=re.M):
        listed.append(f"{first} {second}" if first in GROUPS else first)
    assert [name for name, count in Counter(listed).items() if count > 1] == []
    assert sorted(listed) == sorted(mounted_commands())


# --- start-up: heavy libraries load inside the command that uses them ----------------------------------------------

HEAVY = ("torch", "opacus", "flwr")


def _modules_loaded_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list:
    """Run ``code`` in a fresh interpreter and report which heavy libraries it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"
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


def test_fedemo_verify_checks_a_signed_run_without_importing_torch_opacus_flower_or_matplotlib(tmp_path):
    run = tmp_path / "learned"
    shutil.copytree(Path(__file__).parent / "fixtures" / "learned_run", run)  # a real quickstart run's record
    assert simulations.cli.main(["report", "--build", str(run)]) == 0  # signs it (and draws the page) here
    code = (f"import simulations.cli as c\nassert c.main(['verify', {str(run)!r}]) == 0")
    assert _modules_loaded_after(code, HEAVY + ("matplotlib",)) == []


def test_python_m_simulations_cli_help_answers():
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage: fedemo" in done.stdout


# --- config mistakes, --version and ledgers in our words ----------------------------------------------------------


def _fedemo(argv, capsys) -> tuple[int, str, str]:
    code = simulations.cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["simulate", "baseline"])
def test_an_unknown_set_key_is_one_line_with_a_suggestion_and_where_the_keys_are(command, capsys):
    code, _, err = _fedemo([command, "--set", "num-server-round=3"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and "main dictionary" not in err
    assert "--set: unknown run-config key 'num-server-round' (did you mean 'num-server-rounds'?)" in err
    assert "docs/configuration.md" in err and "[tool.flwr.app.config]" in err


def test_a_key_like_no_other_is_named_without_a_wild_guess(capsys):
    code, _, err = _fedemo(["simulate", "--set", "bogus-key=1"], capsys)
    assert code == 2 and "unknown run-config key 'bogus-key';" in err and "did you mean" not in err


def test_unknown_keys_in_a_config_file_name_the_file_and_the_nearest_keys(tmp_path, capsys):
    config = tmp_path / "typo.toml"
    config.write_text('learning_rate = 0.1\nnum-server-round = 3\n')
    code, _, err = _fedemo(["simulate", str(config)], capsys)
    assert code == 2 and err.startswith(f"fedemo: error: {config}: unknown run-config keys ")
    assert "'learning_rate' (did you mean 'learning-rate'?)" in err
    assert "'num-server-round' (did you mean 'num-server-rounds'?)" in err


def test_a_mistyped_key_is_answered_before_torch_loads():  # Flower's config reader does load: it reads the TOML
    code = ("import contextlib, io, simulations.cli as c\n"
            "with contextlib.redirect_stderr(io.StringIO()): assert c.main(['simulate', '--set', 'bogus=1']) == 2")
    assert _modules_loaded_after(code, ("torch", "opacus")) == []


def test_run_settings_refuse_unknown_keys_with_a_suggestion_too():
    from shared_models.settings.run_settings import ConfigError, RunSettings
    from simulations.run_config import load_run_config

    config, _ = load_run_config()
    with pytest.raises(ConfigError, match=r"'dp-epsilom' \(did you mean 'dp-epsilon'\?\); every key is listed in"):
        RunSettings.from_config({**config, "dp-epsilom": 1.0})


def test_version_names_fedemo_flower_torch_and_opacus_without_importing_them():
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "simulations.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert done.stdout.startswith(f"fedemo {version('fedemo')} (flwr {version('flwr')}, torch {version('torch')}, "
                                  f"opacus {version('opacus')}")
    probe = ("import contextlib, io, simulations.cli as c\n"
             "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): c.main(['--version'])")
    assert _modules_loaded_after(probe) == []


def _node_ledger(state_dir, spends, run=("7301", "20261201-face-dp")):
    from shared_models.privacy_ledger import PrivacyLedger

    ledger = PrivacyLedger.open(state_dir, dataset_id=f"d-{state_dir.name}", epsilon_budget=8.0, delta=1e-5,
                                accountant="pld", run=run)
    for server_round, steps in enumerate(spends, 1):
        ledger.record(run=run[0], server_round=server_round, noise_multiplier=1.2, sample_rate=0.1, steps=steps,
                      max_grad_norm=1.0)
    return ledger


def test_ledger_on_a_folder_of_nodes_lists_each_nodes_spend_and_remaining(tmp_path, capsys):
    node_state = tmp_path / "runs" / "20261201-face-dp" / "node-state"
    ledgers = {name: _node_ledger(node_state / name, spends)
               for name, spends in (("client-0", [10, 10]), ("client-2", [10]), ("client-10", []))}
    code, out, _ = _fedemo(["ledger", str(node_state)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"Privacy ledgers of 3 nodes under {node_state}")
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["client-0", "client-2", "client-10"]
    for line, name in zip(lines[1:4], ["client-0", "client-2", "client-10"]):
        s = ledgers[name].summary()
        assert f"spent {s['spent']:.3f} of 8, remaining {s['remaining']:.3f}" in line
    assert "run 20261201-face-dp: 2 rounds" in lines[1] and "no training yet" in lines[3]
    assert "Largest spend: client-0" in lines[4]
    # A run folder works too (its node-state is one level further down), and --json keys the nodes by folder
    code, out, _ = _fedemo(["ledger", str(node_state.parent), "--json"], capsys)
    assert code == 0 and sorted(json.loads(out)["nodes"]) == ["node-state/client-0", "node-state/client-10",
                                                               "node-state/client-2"]


def test_ledger_on_a_folder_with_an_unreadable_node_says_which(tmp_path, capsys):
    _node_ledger(tmp_path / "client-0", [5])
    (tmp_path / "client-1").mkdir()
    (tmp_path / "client-1" / "privacy_ledger.json").write_text("{not json")
    code, out, _ = _fedemo(["ledger", str(tmp_path)], capsys)
    assert code == 1 and "client-1: UNREADABLE" in out and "client-0: training spent" in out


def test_ledger_on_a_folder_without_ledgers_says_what_to_give(tmp_path, capsys):
    code, _, err = _fedemo(["ledger", str(tmp_path)], capsys)
    assert code == 2 and "no privacy_ledger.json here or in its subfolders" in err and "node-state" in err


def test_ledgers_name_runs_by_their_run_folder_and_keep_flowers_id(tmp_path, capsys):
    from shared_models.privacy_ledger import PrivacyLedger, run_folder_name

    assert run_folder_name("/srv/fedemo/runs/20261201-face-dp/node-state", "") == "20261201-face-dp"
    assert run_folder_name(None, "configured-name") == "configured-name"
    _node_ledger(tmp_path, [10, 10])
    # A resumed run: another Flower run id, the same run folder; an old ledger's id without a name stays as is
    ledger = PrivacyLedger.open(tmp_path, dataset_id=f"d-{tmp_path.name}", epsilon_budget=8.0, delta=1e-5,
                                accountant="pld", run=("7302", "20261201-face-dp"))
    ledger.record(run="7302", server_round=3, noise_multiplier=1.2, sample_rate=0.1, steps=10, max_grad_norm=1.0)
    ledger.record(run="555", server_round=1, noise_multiplier=1.2, sample_rate=0.1, steps=10, max_grad_norm=1.0)
    reloaded = PrivacyLedger.load(tmp_path / "privacy_ledger.json")
    assert reloaded.run_names == {"7301": "20261201-face-dp", "7302": "20261201-face-dp"}
    assert [e.run for e in reloaded.events] == ["7301", "7301", "7302", "555"]  # what the report matches by
    runs = reloaded.summary()["runs"]
    assert runs["20261201-face-dp"]["rounds"] == 3 and runs["20261201-face-dp"]["flower_run_ids"] == ["7301", "7302"]
    code, out, _ = _fedemo(["ledger", str(tmp_path)], capsys)
    assert "run 20261201-face-dp (Flower run 7301, 7302): 3 rounds" in out and "run 555: 1 rounds" in out
