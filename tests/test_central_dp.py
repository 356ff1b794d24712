"""Client-level central DP through Flower's DP wrappers, in real simulations."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch

from server.central_dp import epsilon_after
from shared_models.registry import build_model
from simulations.cli import main as fedemo
from simulations.simulate import run_simulation

pytestmark = pytest.mark.slow


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tiny(tmp_path: Path, **overrides) -> dict:
    return {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "synth-samples": 300,
            "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 2, "local-epochs": 1, **overrides}


def update_norm(run_dir: Path, seed: int) -> float:
    """L2 distance between the saved global model and the initial one the run started from."""
    torch.manual_seed(seed)
    initial = build_model("face_cnn").state_dict()
    final = torch.load(run_dir / "global_model.pt")
    return float(torch.sqrt(sum(((final[k].double() - initial[k].double()) ** 2).sum() for k in initial)))


def test_client_side_fixed_clipping_bounds_each_update_and_accounts_every_release(tmp_path):
    # Near-zero noise makes the clipping visible: the average of updates clipped to C moves the model at most C
    # per round, so two rounds move it at most 2C (plus noise of std z*C/m per coordinate).
    clip = 0.05
    run_dir = run_simulation(None, tiny(tmp_path, **{
        "run-name": "cfixed", "central-dp": "client-fixed", "central-dp-clipping-norm": clip,
        "central-dp-noise-multiplier": 0.01, "learning-rate": 0.01}))
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for entry in rounds[1:]:
        dp = entry["central_dp"]
        assert dp["mode"] == "client-fixed" and dp["num_sampled_clients"] == 3 and dp["population"] == 3
        assert dp["delta"] == pytest.approx(1 / 30)
        # Replace-one-hospital: each release a Gaussian at z / 2, recomputed with dp-accounting directly.
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(dp["noise_multiplier"] / 2), dp["releases"])
        assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(dp["delta"]), rel=1e-9)
        assert dp["effective_noise_multipliers"] == [dp["noise_multiplier"] / 2] * dp["releases"]
        assert dp["releases"] == entry["round"]
    assert update_norm(run_dir, seed=42) <= 2 * clip * 1.05
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["central_dp"]["epsilon"] == rounds[-1]["central_dp"]["epsilon"]


def test_server_side_adaptive_clipping_moves_the_norm_and_is_accounted_with_dp_accounting(tmp_path):
    run_dir = run_simulation(None, tiny(tmp_path, **{
        "run-name": "sadapt", "central-dp": "server-adaptive", "central-dp-clipping-norm": 0.01,
        "central-dp-noise-multiplier": 0.5, "central-dp-clipped-count-stddev": 1.0}))
    rounds = read_rounds(run_dir)
    norms = [r["central_dp"]["clipping_norm"] for r in rounds[1:]]
    # Every update is far above 0.01, so the clipped fraction is ~1 > 0.5 and the norm grows geometrically.
    assert norms[0] == 0.01 and norms[1] > norms[0]
    assert rounds[1]["central_dp"]["next_clipping_norm"] == norms[1]
    for entry in rounds[1:]:
        dp = entry["central_dp"]
        assert dp["releases"] == entry["round"]
        assert dp["epsilon"] == pytest.approx(epsilon_after(0.5, entry["round"], dp["delta"]))


def test_plan_over_the_client_level_budget_is_refused_before_any_work(tmp_path, capsys):
    code = fedemo(["simulate", "--set", f"data-dir={tmp_path / 'fer'}", "--set", f"runs-dir={tmp_path / 'runs'}",
                   "--set", "central-dp=server-fixed", "--set", "central-dp-noise-multiplier=0.8",
                   "--set", "central-dp-epsilon=3", "--set", "num-server-rounds=20"])
    assert code == 2
    err = capsys.readouterr().err
    assert "central-dp-epsilon 3" in err and "allows" in err and "rounds" in err
    assert not (tmp_path / "fer").exists()  # refused before the data was even written


def test_central_dp_mode_is_validated_by_name(tmp_path, capsys):
    assert fedemo(["simulate", "--set", "central-dp=sometimes", "--set", f"runs-dir={tmp_path}"]) == 2
    assert "central-dp" in capsys.readouterr().err
    assert fedemo(["simulate", "--set", "central-dp=server-fixed", "--set", "central-dp-noise-multiplier=0",
                   "--set", f"runs-dir={tmp_path}"]) == 2
    assert "no noise, no privacy" in capsys.readouterr().err


def test_epsilon_after_matches_a_hand_computed_gaussian_bound():
    # One Gaussian release with multiplier 4.530877117 is exactly (1, 1e-6)-DP (dp-accounting's own test
    # table); under replace-one that is noise multiplier z = 2 x 4.530877117. RDP over the default orders
    # can only be slightly looser, never tighter.
    eps = epsilon_after(2 * 4.530877117, 1, 1e-6)
    assert 1.0 <= eps <= 1.05
    assert epsilon_after(1.0, 0, 1e-5) == 0.0
    assert np.isclose(epsilon_after(2.0, 10, 1e-5), epsilon_after(2.0 / np.sqrt(10), 1, 1e-5), rtol=1e-3)


def test_voice_under_dp_uses_fixed_normalisation_and_federated_sums_are_refused(tmp_path, capsys):
    from simulations.synth_voices import write_cremad

    write_cremad(tmp_path / "cremad", n_clips=60, seed=3, n_actors=6)
    run_dir = run_simulation(None, {
        "task": "voice", "dataset": "cremad", "model": "voice_crnn", "data-dir": str(tmp_path / "cremad"),
        "runs-dir": str(tmp_path / "runs"), "run-name": "voice-dp", "partitioner": "natural",
        "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1, "local-epochs": 1,
        "batch-size": 8, "dp": True, "augment": False})
    state = torch.load(run_dir / "global_model.pt")
    mean = next(v for k, v in state.items() if k.endswith("feature_mean"))
    std = next(v for k, v in state.items() if k.endswith("feature_std"))
    assert torch.all(mean == -30.0) and torch.all(std == 15.0)  # the pyproject defaults, no node was asked
    assert read_rounds(run_dir)[1]["train"]["clients"][0]["dp"]["epsilon"] > 0

    assert fedemo(["simulate", "--set", "dp=true", "--set", "feature-normalisation=federated",
                   "--set", f"runs-dir={tmp_path}"]) == 2
    assert "not cover" in capsys.readouterr().err
