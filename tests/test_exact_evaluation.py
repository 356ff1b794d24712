"""`fedemo evaluate RUN_DIR`: the research figure beside a noised report rebuilds the nodes' own test rows.

It is only worth printing if it scores the model on exactly the rows the
simulated nodes evaluated: on a run with exact counts its confusion must equal
the one the nodes reported in the last round, cell for cell.
"""

from __future__ import annotations

import json

import pytest

from simulations.cli import main as fedemo


@pytest.mark.slow
def test_exact_evaluation_scores_the_rows_the_nodes_evaluated(tmp_path, capsys):
    from simulations.simulate import run_simulation

    run_dir = run_simulation(None, {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "exact",
        "synth-samples": 300, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 1,
        "batch-size": 16, "model": "face_scatter", "divergence-rounds": 0})  # scores whatever the model is
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()][-1]
    out = tmp_path / "exact.json"
    assert fedemo(["evaluate", str(run_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["confusion"] == last["confusion"]["counts"]
    assert result["accuracy"] == pytest.approx(last["accuracy"])
    # The loss and the calibration error (issue 21) are the ones the nodes' exact counts gave, too.
    assert result["loss"] == pytest.approx(last["loss"], rel=1e-4)
    assert result["ece"] == pytest.approx(last["calibration"]["overall"]["ece"], abs=1e-6)
    assert sum(result["reliability"]["rows"]) == result["test_rows"]
    assert sorted(result["nodes"]) == ["0", "1", "2"]
    printed = capsys.readouterr().out
    assert "exact accuracy" in printed and "ECE" in printed


def test_exact_evaluation_refuses_a_folder_without_a_finished_run(tmp_path, capsys):
    assert fedemo(["evaluate", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
