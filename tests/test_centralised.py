"""The centralised baseline trains on exactly the rows the simulated clients hold, and signs a report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from client.data.loaders.fer2013 import load_fer2013
from simulations.centralised import pooled_rows, run_centralised
from simulations.cli import main as fedemo
from simulations.run_config import load_run_config


@pytest.mark.slow  # over 5 s on 2 quiet cores (trains the pooled baseline and signs its report)
def test_baseline_pools_client_splits_and_writes_its_run_folder(tmp_path):
    overrides = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "central",
                 "synth-samples": 400, "num-supernodes": 4, "partitioner": "dirichlet", "dirichlet-alpha": 1.0}
    run_dir = run_centralised(None, overrides, epochs=1)
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1]

    _, settings = load_run_config(None, overrides)
    data = load_fer2013(tmp_path / "fer")
    train, test = pooled_rows(data, settings)
    assert not set(train.tolist()) & set(test.tolist())
    assert len(train) + len(test) == len(data)
    assert lines[-1]["eval_examples"] == len(test)
    assert np.asarray(lines[-1]["train_samples"]) == len(train)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "centralised" and summary["train_examples"] == len(train)


@pytest.mark.slow  # trains the baseline and signs its report
def test_baseline_writes_a_signed_report_that_verifies_and_an_older_baseline_folder_builds(tmp_path, capsys):
    overrides = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "central",
                 "synth-samples": 300, "num-supernodes": 3, "dp": True}
    run_dir = run_centralised(None, overrides, epochs=1)
    assert fedemo(["verify", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run"]["mode"] == "centralised" and not report["run"]["incomplete"]
    assert report["run"]["rounds_completed"] == report["run"]["rounds_planned"] == 1  # epochs, as rounds
    assert report["config"]["dp"] is False  # the baseline trains without DP and says so ...
    config = json.loads((run_dir / "config.json").read_text())
    assert config["not_applied"]["dp"] is True  # ... and keeps what it did not apply
    assert report["run"]["test_split"]["n"] == report["final"]["eval_examples"]
    assert report["fairness"]  # per-group figures of the pooled test rows, for compare
    assert (run_dir / "figures" / "rounds.csv").is_file() and (run_dir / "figures" / "accuracy.svg").is_file()

    # A folder the baseline wrote before (lines numbered by epoch only, no report) builds a report too.
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for name in ("report.json", "report.sig", "report.pub", "report.html"):
        (old / name).unlink()
    lines = [json.loads(l) for l in (old / "metrics.jsonl").read_text().splitlines()]
    (old / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in l.items() if k != "round"}) + "\n"
                                               for l in lines))
    capsys.readouterr()
    assert fedemo(["report", "--build", str(old)]) == 0, capsys.readouterr().err
    rebuilt = json.loads((old / "report.json").read_text())
    assert [r["round"] for r in rebuilt["rounds"]] == [l["epoch"] for l in lines]
