"""Secure aggregation (Flower's SecAgg+) in real Flower simulations: same result as FedAvg, DP-SGD on top, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from shared_models.models.registry import build_model
from simulations.cli import main as fedemo
from simulations.simulate import run_simulation

pytestmark = pytest.mark.slow

SMALL = {"synth-samples": 600, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 2}


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def distance(a: dict, b: dict) -> float:
    """L2 distance between two state_dicts."""
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


def initial_weights() -> dict:
    torch.manual_seed(42)  # the coordinator seeds torch with the run's seed before building the model
    return build_model("face_cnn").state_dict()


def test_secure_aggregation_gives_the_fedavg_model_without_seeing_updates(tmp_path):
    # SGD: local training is deterministic here, so plain FedAvg of the same nodes is the reference.
    base = {**SMALL, "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"),
            "optimizer": "sgd", "learning-rate": 0.05}
    plain_dir = run_simulation(None, {**base, "run-name": "plain"})
    secagg_dir = run_simulation(None, {**base, "run-name": "secagg", "secure-aggregation": True})

    plain, secagg = read_rounds(plain_dir), read_rounds(secagg_dir)
    assert [r["round"] for r in secagg] == [0, 1, 2]
    for p, s in zip(plain, secagg):
        assert s["loss"] == pytest.approx(p["loss"], rel=1e-3)
        assert len(s["evaluate"]["clients"]) == 3 and not s["evaluate"]["failures"]
    for entry in secagg[1:]:
        train = entry["train"]
        assert [c["client"] for c in train["clients"]] == ["0", "1", "2"] and not train["failures"]
        assert all(c["num_examples"] > 0 and math.isfinite(c["train_loss"]) for c in train["clients"])
        assert train["secagg"] == {"nodes_aggregated": 3, "updates_clipped": 0}
        # Consent figures travel in the clear beside the masked update, as on the plain path.
        assert all(c["consent"]["used"] == c["num_examples"] and c["consent"]["manifest"] == ""
                   for c in train["clients"]), train["clients"]

    init = initial_weights()
    w_plain, w_secagg = torch.load(plain_dir / "global_model.pt"), torch.load(secagg_dir / "global_model.pt")
    moved = distance(w_plain, init)
    assert moved > 0.1
    # Unmasked and dequantised, the secure average is FedAvg's up to quantisation (masks left in would be ~2**32).
    assert distance(w_secagg, w_plain) < 0.02 * moved, (distance(w_secagg, w_plain), moved)
    build_model("face_cnn").load_state_dict(w_secagg)  # a complete model

    report = json.loads((secagg_dir / "report.json").read_text())
    assert [c["client"] for c in report["consent"]["clients"]] == ["0", "1", "2"], report["consent"]
    summary = json.loads((secagg_dir / "summary.json").read_text())
    assert summary["secagg"]["rounds_halted"] == [] and summary["secagg"]["clip_norm"] == 10.0
    assert "secagg" not in json.loads((plain_dir / "summary.json").read_text())


def test_secure_aggregation_with_dp_sgd_clips_updates_and_keeps_the_ledgers(tmp_path):
    from shared_models.privacy_ledger import PrivacyLedger, epsilon_of

    clip = 0.05  # well below a DP-SGD round's update norm: every update gets clipped before masking
    run_dir = run_simulation(None, {
        **SMALL, "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "secagg-dp",
        "secure-aggregation": True, "secagg-clip-norm": clip, "dp": True, "dp-epsilon": 3.0,
        "dp-accountant": "pld", "state-dir": str(tmp_path / "state"),
    })
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    history: dict[str, list] = {}
    for entry in rounds[1:]:
        assert entry["train"]["secagg"] == {"nodes_aggregated": 3, "updates_clipped": 3}
        for c in entry["train"]["clients"]:
            dp = c["dp"]  # each node's DP report travels beside its masked update
            history.setdefault(c["client"], []).append((dp["noise_multiplier"], dp["sample_rate"], dp["steps"]))
            assert dp["epsilon"] == pytest.approx(epsilon_of(history[c["client"]], dp["delta"], dp["accountant"]))
            assert dp["epsilon"] <= 3.0 and dp["accountant"] == "pld"
    assert sorted(history) == ["0", "1", "2"]
    for client, mechanisms in history.items():
        ledger = PrivacyLedger.load(tmp_path / "state" / f"client-{client}" / "privacy_ledger.json")
        assert ledger.mechanisms() == mechanisms
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["privacy"]["clients"]) == {"0", "1", "2"}

    # Each round moves the model by an average of updates clipped to `clip`: at most `clip` (plus quantisation).
    weights = torch.load(run_dir / "global_model.pt")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert 0 < distance(weights, initial_weights()) <= 2 * clip + 0.01  # 0.01: quantisation


@pytest.mark.parametrize("overrides, words", [
    (["central-dp=\"server-fixed\""], ["central-dp", "server-side clipping", "secure-aggregation"]),
    (["central-dp=\"client-adaptive\""], ["central-dp", "legacy workflow", "dp = true"]),
    (["num-supernodes=2", "min-available-nodes=2"], ["num-supernodes", "at least 3"]),
    (["secagg-clip-norm=20.0"], ["secagg-clipping-range", "secagg-clip-norm"]),
])
def test_unsupported_secure_aggregation_settings_are_refused_at_start(tmp_path, capsys, overrides, words):
    args = ["simulate", "--set", "secure-aggregation=true", "--set", f'runs-dir="{tmp_path / "runs"}"']
    for override in overrides:
        args += ["--set", override]
    assert fedemo(args) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert not (tmp_path / "runs").exists()  # refused before any run folder or data was written
