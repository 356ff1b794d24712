"""The deployment walkthrough's DP config learns: a hospital trial must not spend its budget on nothing.

docs/deployment.md has two hospitals of 600 synthetic faces each run
configs/deployment_dp.toml at epsilon 8. Its earlier face_cnn recipe ended at
0.221, the majority rate, with each hospital's budget spent for good. This
simulates that setting (the same file, two nodes of 600 faces, every round
of the file) and judges the final model by its exact accuracy on the nodes'
test rows (``fedemo evaluate``, simulations/exact_evaluation.py) against the
rate of those rows' most frequent class.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from simulations.exact_evaluation import exact_evaluation
from simulations.run_config import load_run_config
from simulations.simulate import run_simulation

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "deployment_dp.toml"
WALKTHROUGH_HOSPITALS = 2  # hospital-a (fer2013) and hospital-b, `fedemo data synth ... --n 600` each
WALKTHROUGH_SAMPLES = 600
# What makes DP-SGD learn here (docs/privacy.md); the deployment config must train as the DP configs do.
RECIPE = ["model", "optimizer", "learning_rate", "momentum", "batch_size", "local_epochs", "server_momentum",
          "dp_max_grad_norm", "fraction_train"]


def _toml(name: str) -> dict:
    return tomllib.loads((REPO / "configs" / name).read_text(encoding="utf-8"))


def test_the_deployment_config_trains_with_the_dp_recipe_that_learns():
    _, deployed = load_run_config(CONFIG)
    _, recipe = load_run_config(REPO / "configs" / "quickstart_dp.toml")
    assert deployed.model == "face_scatter"
    assert {k: getattr(deployed, k) for k in RECIPE} == {k: getattr(recipe, k) for k in RECIPE}
    deployment = _toml("deployment_dp.toml")
    # Its deployment-specific keys stay: the coordinator holds no data and DP with noised counts is on.
    assert deployment["data-dir"] == "" and deployment["synthesize-if-missing"] is False
    assert deployment["dp"] is True and deployment["eval-dp-noise-multiplier"] > 0
    assert deployed.dp_epsilon == 8.0


@pytest.mark.slow
def test_the_walkthrough_federation_beats_its_majority_rate_by_20_points(tmp_path):
    rounds = _toml("deployment_dp.toml")["num-server-rounds"]
    run_dir = run_simulation(CONFIG, {
        "data-dir": str(tmp_path / "faces"), "synthesize-if-missing": True,
        "synth-samples": WALKTHROUGH_HOSPITALS * WALKTHROUGH_SAMPLES, "num-supernodes": WALKTHROUGH_HOSPITALS,
        "min-available-nodes": WALKTHROUGH_HOSPITALS, "partitioner": "iid",
        "runs-dir": str(tmp_path / "runs"), "run-name": "walkthrough",
    })
    exact = exact_evaluation(run_dir)
    confusion = np.asarray(exact["confusion"])
    majority = confusion.sum(axis=1).max() / confusion.sum()  # the test rows' most frequent true class
    assert exact["test_rows"] >= 150, exact["test_rows"]
    assert exact["accuracy"] >= majority + 0.20, (exact["accuracy"], majority)
    # Within the budget the walkthrough promises each hospital, every round of the file trained.
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == list(range(rounds + 1))
    for entry in metrics[1:]:
        assert len(entry["train"]["clients"]) == WALKTHROUGH_HOSPITALS and not entry["train"]["failures"]
        assert all(0 < c["dp"]["epsilon"] <= 8.0 for c in entry["train"]["clients"])
