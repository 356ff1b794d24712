"""Real Flower simulations (Flower's engine, real ServerApp and ClientApp, files on disk)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared_models.models.registry import build_model
from simulations.cli import main as fedemo
from simulations.simulate import run_simulation

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_face_federation_learns_and_writes_its_run_folder(tmp_path):
    run_dir = run_simulation(REPO / "configs" / "quickstart.toml", {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "face",
    })
    assert run_dir == tmp_path / "runs" / "face"
    assert (tmp_path / "fer" / "fer2013.csv").is_file()  # synthesised in the published format
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["num-supernodes"] == 4 and config["run_config"]["dataset"] == "fer2013"

    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4, 5]
    initial, final = rounds[0], rounds[-1]
    assert final["accuracy"] > initial["accuracy"] + 0.1, (initial["accuracy"], final["accuracy"])
    # Clearly above chance, and not by predicting the majority class (whose macro-F1 is about 0.06).
    assert final["accuracy"] > 1 / 7 + 0.15 and final["macro_f1"] > initial["macro_f1"] + 0.2
    for entry in rounds:
        counts = np.asarray(entry["confusion"]["counts"])
        assert counts.sum() == entry["eval_examples"] == sum(c["num_examples"] for c in entry["evaluate"]["clients"])
        assert entry["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
        assert len(entry["evaluate"]["clients"]) == 4 and not entry["evaluate"]["failures"]
    assert rounds[0]["train"] is None
    assert all(len(r["train"]["clients"]) == 4 for r in rounds[1:])

    state = torch.load(run_dir / "global_model.pt")
    model = build_model("face_cnn")
    model.load_state_dict(state)  # the saved weights are a complete model
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["accuracy"] == final["accuracy"] and summary["rounds"] == 5


def test_voice_federation_normalises_globally_and_counts_broken_clips(tmp_path):
    from simulations.synthetic.synth_voices import write_cremad

    data_dir = tmp_path / "cremad"
    write_cremad(data_dir, n_clips=240, seed=3, n_actors=12)
    broken = sorted((data_dir / "AudioWAV").glob("*.wav"))[:3]
    for path in broken:
        path.write_bytes(b"RIFF not really audio")
    run_dir = run_simulation(None, {
        "task": "voice", "dataset": "cremad", "model": "voice_crnn", "data-dir": str(data_dir),
        "runs-dir": str(tmp_path / "runs"), "run-name": "voice", "partitioner": "natural",
        "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 1, "batch-size": 16,
        "valence-arousal": True,
    })
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1]
    # The broken clips belong to the shared folder: counted once for the dataset (the data check, which the
    # simulation runs and logs before the engine starts), not once per node.
    assert [c["skipped"] for c in rounds[-1]["evaluate"]["clients"]] == [0, 0, 0]
    from client.tools.data_check import check_data_dir

    assert sorted(s["ref"] for s in check_data_dir(data_dir, "cremad", "voice").skipped) == sorted(
        f"AudioWAV/{p.name}" for p in broken)
    assert -1.0 <= rounds[-1]["ccc_valence"] <= 1.0 and -1.0 <= rounds[-1]["ccc_arousal"] <= 1.0
    state = torch.load(run_dir / "global_model.pt")
    mean, std = state["trunk.feature_mean"], state["trunk.feature_std"]
    assert mean.shape == (128,) and float(mean.abs().sum()) > 0 and float((std - 1).abs().sum()) > 0


def test_cli_reports_config_errors_by_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "face"\nlearning-rte = 0.1\n')
    assert fedemo(["simulate", str(bad)]) == 2
    assert "learning-rte" in capsys.readouterr().err
    assert fedemo(["simulate", "--set", "partitioner=random"]) == 2
    assert "partitioner" in capsys.readouterr().err
    assert fedemo(["simulate", "--set", "task=voice", "--set", "model=voice_crnn"]) == 2  # fer2013 is faces
    assert "dataset" in capsys.readouterr().err


def test_a_federation_whose_nodes_all_fail_stops_with_their_reason(tmp_path, capsys):
    # A cause every node would share (FER2013's sidecar has no ethnicity) is refused before the engine starts.
    code = fedemo(["simulate", str(REPO / "configs" / "quickstart.toml"),
                   "--set", f'data-dir="{tmp_path / "fer"}"', "--set", f'runs-dir="{tmp_path / "runs"}"',
                   "--set", "synth-samples=200", "--set", "partitioner=demographic",
                   "--set", 'demographic-attribute="ethnicity"'])
    err = capsys.readouterr().err
    assert code == 2 and "ethnicity" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    # Nodes that all fail at run time (the check cannot see it): the run stops with their reason, on record.
    with pytest.raises(RuntimeError, match="all 4 nodes failed.*cannot read its test data"):
        run_simulation(None, {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"),
                              "synth-samples": 200, "run-name": "allfail", "num-supernodes": 4,
                              "min-available-nodes": 4},
                       client_app="tests.fault_apps:crash_evaluate_all_app")
    rounds = read_rounds(tmp_path / "runs" / "allfail")
    assert len(rounds) == 1 and len(rounds[0]["evaluate"]["failures"]) == 4  # the failures are on record


def test_dp_federation_reports_recomputable_epsilon_and_nodes_refuse_past_budget(tmp_path):
    from shared_models.privacy_ledger import PrivacyLedger, epsilon_of

    base = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "synth-samples": 400,
            "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 2, "local-epochs": 1,
            "dp": True, "dp-epsilon": 2.0, "dp-accountant": "pld", "state-dir": str(tmp_path / "state")}
    run_dir = run_simulation(None, {**base, "run-name": "dp1"})
    rounds = read_rounds(run_dir)
    history: dict[str, list] = {}
    for entry in rounds[1:]:
        assert not entry["train"]["failures"]
        for c in entry["train"]["clients"]:
            dp = c["dp"]
            history.setdefault(c["client"], []).append((dp["noise_multiplier"], dp["sample_rate"], dp["steps"]))
            # The reported epsilon is the accountant's, recomputed from the reported mechanism history.
            assert dp["epsilon"] == pytest.approx(epsilon_of(history[c["client"]], dp["delta"], dp["accountant"]))
            assert dp["epsilon"] <= 2.0 and dp["accountant"] == "pld" and dp["max_grad_norm"] == 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["max_epsilon"] == max(c["epsilon"] for c in summary["privacy"]["clients"].values())
    for client in history:
        assert summary["privacy"]["clients"][client]["steps_total"] == sum(h[2] for h in history[client])
        ledger = PrivacyLedger.load(tmp_path / "state" / f"client-{client}" / "privacy_ledger.json")
        assert ledger.mechanisms() == history[client]  # the ledger holds exactly what was reported

    # The budget belongs to the data: a second run on the same ledgers finds it spent and is declined.
    # No node trained, so the run fails (min-trained-nodes), naming each client's reason; the round is on record.
    with pytest.raises(RuntimeError, match="no round aggregated") as refused:
        run_simulation(None, {**base, "run-name": "dp2"})
    assert "client 0: run declined" in str(refused.value) and "client 1: run declined" in str(refused.value)
    rounds = read_rounds(tmp_path / "runs" / "dp2")
    failures = rounds[1]["train"]["failures"]
    assert len(failures) == 2 and all(f["reason"].startswith("run declined") for f in failures)
    assert rounds[1]["train"]["clients"] == []


def test_ledger_command_describes_spent_and_remaining_budget(tmp_path, capsys):
    from shared_models.privacy_ledger import PrivacyLedger

    ledger = PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=3.0, delta=1e-5, accountant="pld")
    ledger.record(run="42", server_round=1, noise_multiplier=1.5, sample_rate=0.1, steps=10, max_grad_norm=1.0)
    assert fedemo(["ledger", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "budget epsilon 3" in out and "remaining" in out and "run 42: 1 rounds, 10 DP-SGD steps" in out
    assert fedemo(["ledger", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
