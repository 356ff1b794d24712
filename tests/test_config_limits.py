"""Issue 20, item 7: configs that were silently wrong or failed only after the engine started.

``dp-epsilon = inf`` ran "DP" at noise 0.06 and wrote ``Infinity`` into
metrics.jsonl; ``learning-rate = inf`` failed inside every node;
``run-name = "../../escape"`` wrote a run folder outside ``runs-dir``;
``num-supernodes = 1000`` and ``min-partition-size = 1000000`` failed in every
node after the engine started. Each is now one line before any engine starts,
and every JSON file a run writes is strict JSON (a NaN figure is null, with the
reason beside it).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from shared_models.atomic_files import atomic_write_json
from shared_models.settings.run_settings import ConfigError, RunSettings
from simulations.cli import main as fedemo
from simulations.run_config import load_run_config

FLOAT_KEYS = sorted(f.name.replace("_", "-") for f in fields(RunSettings) if f.type == "float")


def strict_loads(text: str):
    """Python's json reads NaN/Infinity; a strict reader (jq, JavaScript) does not: neither may we write them."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_every_float_key_refuses_a_non_finite_value_by_name(value):
    assert len(FLOAT_KEYS) >= 30  # dp-epsilon, learning-rate, the norms, ...: every float key is tried
    for key in FLOAT_KEYS:
        with pytest.raises(ConfigError, match=f"run-config {key} = .*must be a finite number"):
            load_run_config(None, {key: value})


def test_dp_epsilon_inf_from_the_command_line_is_one_line_before_any_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    for setting in ("dp-epsilon=inf", "learning-rate=inf", "dp-max-grad-norm=nan"):
        code = fedemo(["simulate", "--set", "dp=true", "--set", setting, "--set", f'runs-dir="{runs}"'])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert setting.split("=")[0] in err and "finite" in err
    assert not runs.exists()


@pytest.mark.parametrize("name", ["../../escape", "../sibling", "a/b", "..", ".", ".hidden", "/tmp/absolute",
                                  "back\\slash", "new\nline", "x" * 201])
def test_a_run_name_that_leaves_runs_dir_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="run-config run-name = .*plain folder name"):
        load_run_config(None, {"run-name": name, "runs-dir": str(tmp_path / "a" / "b" / "runs")})


def test_the_escaping_run_name_of_the_issue_writes_nothing_outside_runs_dir(tmp_path, capsys):
    base = tmp_path / "a" / "b"
    code = fedemo(["simulate", "--set", 'run-name="../../escape"', "--set", f'runs-dir="{base / "runs"}"',
                   "--set", f'data-dir="{tmp_path / "fer"}"'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "run-name" in err, err
    assert not (tmp_path / "escape").exists() and not base.exists()


@pytest.mark.slow
@pytest.mark.parametrize("setting, named", [("num-supernodes=1000", "1000 node(s)"),
                                            ("min-partition-size=1000000", "min-partition-size 1000000")])
def test_more_nodes_or_larger_partitions_than_the_rows_allow_stop_before_the_engine(tmp_path, setting, named):
    """Before: every node failed to partition after the engine (and its workers) had started."""
    fedemo_bin = str(Path(sys.executable).parent / "fedemo")
    runs = tmp_path / "runs"
    done = subprocess.run([fedemo_bin, "simulate", "--set", setting, "--set", "min-available-nodes=1",
                           "--set", "synth-samples=300", "--set", f'data-dir="{tmp_path / "fer"}"',
                           "--set", f'runs-dir="{runs}"', "--set", 'run-name="limits"'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    err = [line for line in done.stderr.splitlines() if line.startswith("fedemo: error")]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(err) == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr
    assert named in err[0] and "300 usable" in err[0], err
    assert not (runs / "limits").exists()  # no run folder: the engine never started


def test_metrics_and_summaries_are_strict_json_with_non_finite_figures_named(tmp_path):
    from server.record.run_record import RunRecord

    record = RunRecord.create(tmp_path, "nan-run", {"dp-epsilon": 1.0}, {})
    record.log_round({"round": 0, "loss": float("nan"), "accuracy": 0.1,
                      "train": {"clients": [{"client": "0", "train_loss": float("inf")}]}})
    record.rewrite_rounds([*record.rounds(), {"round": 1, "loss": -math.inf, "accuracy": 0.2}])
    record.write_json("summary.json", {"final": {"loss": float("nan")}, "rounds": 1})
    lines = [strict_loads(line) for line in (record.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] is None and lines[0]["train"]["clients"][0]["train_loss"] is None
    assert lines[0]["non_finite"] == {"loss": "NaN", "train.clients.0.train_loss": "Infinity"}
    assert lines[1]["loss"] is None and lines[1]["non_finite"] == {"loss": "-Infinity"}
    summary = strict_loads((record.run_dir / "summary.json").read_text())
    assert summary["final"]["loss"] is None and summary["non_finite"] == {"final.loss": "NaN"}


def test_the_shared_json_writer_refuses_nan_naming_the_file_and_place(tmp_path):
    target = tmp_path / "ledger.json"
    with pytest.raises(ValueError, match=r"ledger.json: events.1.epsilon is Infinity"):
        atomic_write_json(target, {"events": [{"epsilon": 1.0}, {"epsilon": math.inf}]})
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written, no temp file left
    atomic_write_json(target, {"epsilon": 1.5})
    assert strict_loads(target.read_text()) == {"epsilon": 1.5}


@pytest.mark.parametrize("overrides, refused", [
    # was a ValueError from build_model once the coordinator built the model
    ({"task": "voice", "dataset": "cremad", "model": "voice_stats", "valence-arousal": True,
      "feature-normalisation": "fixed"}, "valence-arousal = True: model 'voice_stats' has no valence/arousal head"),
    # was refused by `fedemo simulate` only, after parsing; `flwr run` waited for the nodes forever
    ({"min-available-nodes": 5, "num-supernodes": 4}, "min-available-nodes = 5: more than the 4 simulated nodes"),
    # was Flower's ValueError inside the coordinator, turned into a ConfigError as the run started
    ({"central-dp": "server-adaptive", "central-dp-noise-multiplier": 1.0, "central-dp-clipped-count-stddev": 0.5},
     "central-dp-clipped-count-stddev = 0.5: must be more than half of central-dp-noise-multiplier"),
])
def test_checks_of_the_run_config_alone_refuse_it_while_it_is_parsed(overrides, refused):
    """A check that needs nothing but the run config lives in its settings section, so every entry point
    (fedemo simulate, flwr run, the node) refuses the config in the same line before anything starts."""
    with pytest.raises(ConfigError, match=refused):
        RunSettings.from_config(_config(overrides))


def _config(overrides):
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return {**tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"], **overrides}


def test_deployed_hospitals_are_not_counted_by_num_supernodes():
    """With no shared data-dir the nodes are hospitals that connect; num-supernodes does not bound them."""
    RunSettings.from_config(_config({"data-dir": "", "min-available-nodes": 50, "synthesize-if-missing": False}))
