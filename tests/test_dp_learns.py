"""Sample-level DP-SGD still learns: a real Flower simulation of the DP recipe, within its budget.

The run is configs/quickstart_dp.toml as a user runs it (4 hospitals with
1,600 training faces each, a linear head on fixed scattering features,
Opacus DP-SGD on each, PRV accounting, 8 rounds), at epsilon 8 and at
epsilon 1, where the earlier CNN recipe stayed below the majority class.
Learning is judged against the run's own test rows: the final global model
must beat both the untrained model and the rate of their most frequent class
(what a model stuck at the majority class scores, which is where DP training
sat before this recipe).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared_models.settings.run_settings import ConfigError
from simulations.run_config import load_run_config
from simulations.simulate import run_simulation

REPO = Path(__file__).resolve().parents[1]

ROUNDS = 8  # the config's own


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [8.0, 1.0])
def test_dp_federation_learns_above_majority_class_within_budget(tmp_path, epsilon):
    run_dir = run_simulation(REPO / "configs" / "quickstart_dp.toml", {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "dp-learns",
        "dp-epsilon": epsilon, "num-server-rounds": ROUNDS,
        # exact counts: at epsilon 1 the count noise alone moved the judged accuracy and majority rate by 0.1
        # (a run scored 0.38 against a noised majority of 0.49); what is tested here is the training
        "eval-dp-noise-multiplier": 0.0,
        "divergence-rounds": 0,  # at epsilon 1 the loss may rise late while accuracy holds: judged below, not stopped
    })
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    initial, final = rounds[0], rounds[-1]
    counts = np.asarray(final["confusion"]["counts"])
    majority_rate = counts.sum(axis=1).max() / counts.sum()  # true-class totals of the same test rows
    assert final["accuracy"] > initial["accuracy"] + 0.1, (initial["accuracy"], final["accuracy"])
    assert final["accuracy"] > majority_rate + 0.02, (final["accuracy"], majority_rate)
    # It learned more than the class prior: more than one class is predicted right.
    assert int((np.diag(counts) > 0).sum()) >= 2

    for entry in rounds[1:]:
        clients = entry["train"]["clients"]
        assert len(clients) == 4 and not entry["train"]["failures"]
        for client in clients:
            dp = client["dp"]
            assert 0 < dp["epsilon"] <= epsilon and dp["budget"] == epsilon
            assert dp["max_grad_norm"] == 1.0 and dp["noise_multiplier"] > 0.3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["privacy"]["max_epsilon"] <= epsilon


@pytest.mark.slow
def test_dp_recipe_loss_falls_past_round_one_and_its_probabilities_stay_calibrated(tmp_path):
    """Issue 21: under the earlier recipe (lr 1) accuracy held while the test loss climbed (2.08, 1.62, 2.55,
    ... 8.7): the head grew overconfident, its probabilities meaningless. The run's own exact evaluation
    (count noise off: the loss is then reported each round) must show no round above round 1's loss, a final
    loss well below the untrained model's, and a final expected calibration error (from the nodes' counts)
    below 0.15 (0.31 under the earlier recipe), with the accuracy kept."""
    run_dir = run_simulation(REPO / "configs" / "quickstart_dp.toml", {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "dp-loss",
        "eval-dp-noise-multiplier": 0.0,
    })
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    losses = [r["loss"] for r in rounds]
    assert max(losses[2:]) <= losses[1], losses
    assert losses[-1] < 0.6 * losses[0], losses
    final = rounds[-1]
    assert final["accuracy"] > 0.65, final["accuracy"]
    assert not final["calibration"]["noised"]
    assert final["calibration"]["overall"]["ece"] < 0.15, final["calibration"]["overall"]["ece"]


def test_dp_recipe_config_parses_and_server_momentum_is_checked():
    _, settings = load_run_config(REPO / "configs" / "quickstart_dp.toml")
    assert settings.dp and settings.server_momentum == 0.9 and settings.model == "face_scatter"
    _, settings = load_run_config(REPO / "configs" / "face50_dp.toml")
    assert settings.dp and settings.num_supernodes == 50 and settings.server_momentum == 0.9
    assert settings.model == "face_scatter_lcn_blur"  # the fair front end (issue 24, docs/fairness.md)
    _, settings = load_run_config(REPO / "configs" / "voice50_dp.toml")
    assert settings.dp and settings.num_supernodes == 50
    assert settings.model == "voice_stats_norm"  # the fair front end for voices (issue 24, docs/fairness.md)
    with pytest.raises(ConfigError, match="server-momentum.*must be in"):
        load_run_config(None, {"server-momentum": 1.0})
    with pytest.raises(ConfigError, match="server-momentum.*central-dp"):
        load_run_config(None, {"server-momentum": 0.9, "central-dp": "server-fixed"})
