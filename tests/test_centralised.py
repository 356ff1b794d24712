"""The centralised baseline trains on exactly the rows the simulated clients hold."""

from __future__ import annotations

import json

import numpy as np

from client.loaders.fer2013 import load_fer2013
from simulations.centralised import pooled_rows, run_centralised
from simulations.run_config import load_run_config


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
